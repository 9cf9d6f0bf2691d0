"""HTTP API v1 handlers (design §6). Thin: validate, call the supervisor or store, answer."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import Any

from aiohttp import web

from oxyd.config import WEBHOOK_EVENTS
from oxyd.engine import OutboundMedia
from oxyd.http import APP, ApiError, json_body, read_limited, require_admin, tenant_id
from oxyd.model import ENGINES, valid_tenant_id

table = web.RouteTableDef()

_TO_RE = re.compile(r"^\+?[0-9]{6,15}$|^[0-9A-Za-z._:-]{1,64}@(s\.whatsapp\.net|g\.us|lid|"
                    r"broadcast|newsletter)$")
MEDIA_TYPES = ("image", "video", "audio", "document")
MAX_TEXT_CHARS = 65_536


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name}: must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name}: must be between {lo} and {hi}")
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid_parameter", f"{name}: must be true or false")
    return raw in ("true", "1")


# ---- probes ----


@table.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return _ok({"status": "ok"})


@table.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app[APP]
    checks = {
        "database": await app.store.ping(),
        "supervisor": app.supervisor.running and app.supervisor.broken is None,
        "writer": not app.writer.failing,
    }
    ready = all(checks.values())
    return _ok({"status": "ready" if ready else "not_ready", "checks": checks},
               200 if ready else 503)


# ---- tenants ----


@table.get("/v1/tenants")
async def list_tenants(request: web.Request) -> web.Response:
    sup = request.app[APP].supervisor
    own = request.get("oxyd_token_tenant")
    tenants = sup.tenants() if own is None else [
        sup.tenant_json(sup.runners[own])] if own in sup.runners else []
    return _ok({"tenants": tenants})


@table.post("/v1/tenants")
async def add_tenant(request: web.Request) -> web.Response:
    require_admin(request)
    body = await json_body(request, allowed={"id": str, "engine": str, "webhook": dict},
                           required=("id",))
    tid = body["id"]
    if not valid_tenant_id(tid):
        raise ApiError(400, "invalid_tenant_id", "id: must match ^[a-z0-9][a-z0-9_-]{0,62}$")
    engine = body.get("engine") or "neonize"
    if engine not in ENGINES:
        raise ApiError(400, "invalid_field", f"engine: must be one of {list(ENGINES)}")
    app = request.app[APP]
    if engine not in app.engines:
        raise ApiError(400, "engine_unavailable", f"engine: {engine} is not available here")
    hook = _webhook_fields(body["webhook"]) if body.get("webhook") is not None else None
    data = await app.supervisor.add(tid, engine)
    if hook is not None:
        await _set_webhook(request, tid, hook)
    return _ok(data, 201)


@table.get("/v1/tenants/{id}")
async def get_tenant(request: web.Request) -> web.Response:
    sup = request.app[APP].supervisor
    return _ok(sup.tenant_json(sup.runner(tenant_id(request))))


@table.delete("/v1/tenants/{id}")
async def remove_tenant(request: web.Request) -> web.Response:
    require_admin(request)
    tid = tenant_id(request)
    purge = _bool_param(request, "purge")
    await request.app[APP].supervisor.remove(tid, purge=purge)
    return _ok({"id": tid, "removed": True, "purged": purge})


@table.post("/v1/tenants/{id}/start")
async def start_tenant(request: web.Request) -> web.Response:
    return _ok(await request.app[APP].supervisor.start_tenant(tenant_id(request)), 202)


@table.post("/v1/tenants/{id}/stop")
async def stop_tenant(request: web.Request) -> web.Response:
    return _ok(await request.app[APP].supervisor.stop_tenant(tenant_id(request)), 202)


@table.post("/v1/tenants/{id}/restart")
async def restart_tenant(request: web.Request) -> web.Response:
    return _ok(await request.app[APP].supervisor.restart_tenant(tenant_id(request)), 202)


@table.post("/v1/tenants/{id}/pair")
async def pair(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    body = await json_body(request, allowed={"phone": str})
    phone = body.get("phone")
    if phone is not None:
        phone = phone.lstrip("+").replace(" ", "")
        if not re.fullmatch(r"[0-9]{6,15}", phone):
            raise ApiError(400, "invalid_field",
                           "phone: must be 6 to 15 digits in international format")
    return _ok(await request.app[APP].supervisor.pair(tid, phone), 202)


@table.get("/v1/tenants/{id}/pairing")
async def pairing(request: web.Request) -> web.StreamResponse:
    tid = tenant_id(request)
    info = request.app[APP].supervisor.pairing(tid)
    if "image/png" in request.headers.get("Accept", ""):
        if not info["qr"]:
            raise ApiError(404, "no_qr", "no QR code to show: start pairing first")
        import io

        import segno

        buf = io.BytesIO()
        segno.make(info["qr"], error="l").save(buf, kind="png", scale=6, border=4)
        return web.Response(body=buf.getvalue(), content_type="image/png",
                            headers={"Cache-Control": "no-store"})
    return _ok({"qr": info["qr"], "code": info["code"], "expires_ms": info["expires_ms"]})


@table.post("/v1/tenants/{id}/logout")
async def logout(request: web.Request) -> web.Response:
    return _ok(await request.app[APP].supervisor.logout(tenant_id(request)), 202)


# ---- messages and chats ----


@table.post("/v1/tenants/{id}/messages")
async def send_message(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    app = request.app[APP]
    limit = app.cfg.send.max_media_bytes * 4 // 3 + 64 * 1024
    body = await json_body(request, allowed={"to": str, "text": str, "media": dict},
                           required=("to",), limit_bytes=limit)
    to = body["to"]
    if not _TO_RE.match(to):
        raise ApiError(400, "invalid_field",
                       "to: must be a phone number in international format or a WhatsApp JID")
    to = to.lstrip("+")
    text, media = body.get("text"), None
    if body.get("media") is not None:
        media = _media(body["media"], app.cfg.send.max_media_bytes)
        if text is not None:
            raise ApiError(400, "invalid_field", "text: use media.caption with media")
    elif text is None:
        raise ApiError(400, "missing_field", "text: is required (or media)")
    elif not text or len(text) > MAX_TEXT_CHARS:
        raise ApiError(400, "invalid_field", f"text: must be 1 to {MAX_TEXT_CHARS} characters")
    sent = await app.supervisor.send(tid, to, text, media)
    return _ok(sent, 202)


def _media(raw: dict[str, Any], max_bytes: int) -> OutboundMedia:
    allowed = {"type": str, "data_b64": str, "caption": str, "filename": str, "mime": str}
    for key, value in raw.items():
        if key not in allowed:
            raise ApiError(400, "unknown_field", f"media.{key}: unknown field")
        if value is not None and not isinstance(value, str):
            raise ApiError(400, "invalid_field", f"media.{key}: must be a string")
    if raw.get("type") not in MEDIA_TYPES:
        raise ApiError(400, "invalid_field", f"media.type: must be one of {list(MEDIA_TYPES)}")
    if not raw.get("data_b64"):
        raise ApiError(400, "missing_field", "media.data_b64: is required")
    try:
        data = base64.b64decode(raw["data_b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_field", "media.data_b64: is not valid base64") from None
    if not data:
        raise ApiError(400, "invalid_field", "media.data_b64: is empty")
    if len(data) > max_bytes:
        raise ApiError(413, "media_too_large", f"media: larger than {max_bytes} bytes")
    filename = raw.get("filename")
    if filename is not None:
        # A name shown to the recipient, never a path we read.
        filename = filename.replace("/", "_").replace("\\", "_")[:255]
    return OutboundMedia(raw["type"], data, raw.get("caption"), filename, raw.get("mime"))


@table.get("/v1/tenants/{id}/messages")
async def list_messages(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    chat = request.query.get("chat") or None
    try:
        msgs, nxt = await request.app[APP].store.messages(tid, chat, limit,
                                                          request.query.get("cursor") or None)
    except ValueError:
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor this API returned") from None
    return _ok({"messages": msgs, "next_cursor": nxt})


@table.get("/v1/tenants/{id}/chats")
async def list_chats(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    try:
        chats, nxt = await request.app[APP].store.chats(tid, limit,
                                                        request.query.get("cursor") or None)
    except ValueError:
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor this API returned") from None
    return _ok({"chats": chats, "next_cursor": nxt})


# ---- tokens ----


@table.post("/v1/tenants/{id}/tokens")
async def create_token(request: web.Request) -> web.Response:
    require_admin(request)
    tid = tenant_id(request)
    await json_body(request, allowed={})
    token = "oxt_" + secrets.token_urlsafe(32)
    app = request.app[APP]
    await app.store.add_token(tid, token, app.clock.now_ms())
    return _ok({"token": token, "tenant": tid}, 201)


@table.delete("/v1/tenants/{id}/tokens")
async def revoke_tokens(request: web.Request) -> web.Response:
    require_admin(request)
    tid = tenant_id(request)
    return _ok({"revoked": await request.app[APP].store.revoke_tokens(tid)})


# ---- webhooks ----


def _webhook_fields(body: dict[str, Any]) -> dict[str, Any]:
    for key in body:
        if key not in ("url", "secret", "events"):
            raise ApiError(400, "unknown_field", f"webhook.{key}: unknown field")
    url, secret, events = body.get("url"), body.get("secret"), body.get("events")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url) or len(url) > 2048:
        raise ApiError(400, "invalid_field", "url: must be an http:// or https:// URL")
    if not isinstance(secret, str) or not 16 <= len(secret) <= 512:
        raise ApiError(400, "invalid_field", "secret: must be a string of 16 to 512 characters")
    if events is not None:
        if not isinstance(events, list) or not all(e in WEBHOOK_EVENTS for e in events):
            raise ApiError(400, "invalid_field",
                           f"events: must be a list of event types from {list(WEBHOOK_EVENTS)}")
    return {"url": url, "secret": secret, "events": events}


async def _set_webhook(request: web.Request, tid: str, hook: dict[str, Any]) -> None:
    app = request.app[APP]
    from oxyd import log

    log.redact(hook["secret"])
    await app.store.set_webhook(tid, hook["url"], hook["secret"], hook["events"],
                                app.clock.now_ms())
    app.subs.set_tenant(tid, hook["events"])


@table.put("/v1/tenants/{id}/webhook")
async def put_webhook(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    raw = await json_body(request, allowed={"url": str, "secret": str, "events": list},
                          required=("url", "secret"))
    hook = _webhook_fields(raw)
    await _set_webhook(request, tid, hook)
    return _ok({"url": hook["url"], "secret": "***", "events": hook["events"]})


@table.get("/v1/tenants/{id}/webhook")
async def get_webhook(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    hook = (await request.app[APP].store.webhooks()).get(tid)
    if hook is None:
        raise ApiError(404, "webhook_not_found", "this tenant has no webhook")
    return _ok({"url": hook["url"], "secret": "***", "events": hook["events"]})


@table.delete("/v1/tenants/{id}/webhook")
async def delete_webhook(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    app = request.app[APP]
    if not await app.store.delete_webhook(tid):
        raise ApiError(404, "webhook_not_found", "this tenant has no webhook")
    app.subs.remove_tenant(tid)
    return _ok({"deleted": True})


# ---- health and simulation ----


@table.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    require_admin(request)
    sup = request.app[APP].supervisor
    result = sup.last_health or await sup.health_sweep()
    return _ok(result)


@table.post("/v1/tenants/{id}/simulate")
async def simulate(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    app = request.app[APP]
    raw = await read_limited(request, app.cfg.http.max_body_bytes)
    import json

    from oxyd.engine import NotConnected
    from oxyd.simulator import SimulationError

    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object with an action")
    try:
        result = await app.supervisor.simulate(tid, body)
    except SimulationError as e:
        raise ApiError(400, "invalid_action", str(e)) from None
    except NotConnected as e:
        raise ApiError(409, "not_connected", str(e)) from None
    return _ok({"ok": True, **result}, 202)
