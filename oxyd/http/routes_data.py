"""HTTP API v1 handlers for a tenant's data: sending, messages, chats, webhooks (design §6)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from aiohttp import web

from oxyd.config import WEBHOOK_EVENTS
from oxyd.destinations import ForbiddenDestination
from oxyd.engine import OutboundMedia
from oxyd.http.routes import int_param, no_body, ok, query_param
from oxyd.http.server import (
    APP,
    TOKEN_TENANT,
    ApiError,
    body_limit_bytes,
    check_fields,
    json_body,
    parse_json_object,
    read_limited,
    tenant_id,
)

table = web.RouteTableDef()

TO_RE = re.compile(
    r"\+?[0-9]{6,15}|[0-9A-Za-z._:-]{1,64}@(s\.whatsapp\.net|g\.us|lid|broadcast|newsletter)"
)
URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*")
MEDIA_TYPES = ("image", "video", "audio", "document")
MAX_TEXT_CHARS = 65_536
MAX_URL_CHARS = 2048
MAX_SECRET_CHARS = 512
MAX_LIST = 1000
MAX_EVENT_TYPES = 64  # every event type fits many times over; more is not a real request


# ---- sending ----


@table.post("/v1/tenants/{id}/messages")
async def send_message(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    app = request.app[APP]
    # Media travels base64-encoded in the JSON body, so only a body carrying media may exceed
    # http.max_body_bytes (a 2 MiB text body is still 413).
    media_limit = app.cfg.send.max_media_bytes * 4 // 3 + 64 * 1024
    raw = await read_limited(request, max(media_limit, body_limit_bytes(request)))
    body = parse_json_object(raw, required=True)
    if len(raw) > body_limit_bytes(request) and not isinstance(body.get("media"), dict):
        raise ApiError(413, "body_too_large", f"the body exceeds {body_limit_bytes(request)} bytes")
    check_fields(body, {"to": str, "text": str, "media": dict}, required=("to",))
    to = body["to"]
    if not TO_RE.fullmatch(to):
        raise ApiError(
            400, "invalid_field", "to: must be a phone number in international format or a JID"
        )
    to = to.lstrip("+")
    text, media = body.get("text"), None
    if body.get("media") is not None:
        media = _media(body["media"], app.cfg.send.max_media_bytes)
        if text is not None:
            raise ApiError(400, "invalid_field", "text: use media.caption with media")
    elif text is None:
        raise ApiError(400, "missing_field", "text: is required (or media)")
    elif not text.strip() or len(text) > MAX_TEXT_CHARS:
        raise ApiError(400, "invalid_field", f"text: must be 1 to {MAX_TEXT_CHARS} characters")
    return ok(await app.supervisor.send(tid, to, text, media), 202)


def _media(raw: dict[str, Any], max_bytes: int) -> OutboundMedia:
    allowed = {"type": str, "data_b64": str, "caption": str, "filename": str, "mime": str}
    check_fields(raw, allowed, ("type", "data_b64"), prefix="media.")
    if raw["type"] not in MEDIA_TYPES:
        raise ApiError(400, "invalid_field", f"media.type: must be one of {list(MEDIA_TYPES)}")
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


# ---- reading ----


def _cursor(request: web.Request) -> str | None:
    cursor = query_param(request, "cursor") or None
    if cursor is not None and (len(cursor) > 512 or not cursor.isascii()):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor this API returned")
    return cursor


@table.get("/v1/tenants/{id}/messages")
async def list_messages(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    limit = int_param(request, "limit", 100, 1, 1000)
    chat = query_param(request, "chat") or None
    cursor = _cursor(request)
    try:
        msgs, nxt = await request.app[APP].store.messages(tid, chat, limit, cursor)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor this API returned") from None
    return ok({"messages": msgs, "next_cursor": nxt})


@table.get("/v1/tenants/{id}/chats")
async def list_chats(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    limit = int_param(request, "limit", 100, 1, 1000)
    cursor = _cursor(request)
    try:
        chats, nxt = await request.app[APP].store.chats(tid, limit, cursor)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor this API returned") from None
    return ok({"chats": chats, "next_cursor": nxt})


# ---- webhooks ----


def webhook_fields(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    check_fields(body, {"url": str, "secret": str, "events": list}, ("url", "secret"), prefix)
    url, secret, events = body["url"], body["secret"], body.get("events")
    if len(url) > MAX_URL_CHARS or not URL_RE.fullmatch(url):
        raise ApiError(400, "invalid_field", f"{prefix}url: must be an http:// or https:// URL")
    if not secret or len(secret) > MAX_SECRET_CHARS:
        raise ApiError(
            400, "invalid_field", f"{prefix}secret: must be 1 to {MAX_SECRET_CHARS} characters"
        )
    if events is not None and len(events) > MAX_EVENT_TYPES:
        raise ApiError(400, "invalid_field", f"{prefix}events: at most {MAX_EVENT_TYPES} entries")
    if events is not None and (not all(isinstance(e, str) and e in WEBHOOK_EVENTS for e in events)):
        raise ApiError(
            400,
            "invalid_field",
            f"{prefix}events: must list event types from {list(WEBHOOK_EVENTS)}",
        )
    return {"url": url, "secret": secret, "events": sorted(set(events)) if events else events}


async def set_webhook(request: web.Request, tid: str, hook: dict[str, Any]) -> None:
    from oxyd import log

    app = request.app[APP]
    # A tenant token may not point oxyd at the machine or its network (SSRF); the admin may.
    guarded = request.get(TOKEN_TENANT) is not None and not app.cfg.webhooks.allow_private
    if guarded:
        try:
            await app.webhooks.guard.check_url(hook["url"])
        except ForbiddenDestination as e:
            raise ApiError(
                400,
                "forbidden_destination",
                f"url: {e}; a tenant's webhook must be a public address"
                " (the operator can allow private ones with webhooks.allow_private)",
            ) from None
    log.redact(hook["secret"])
    await app.store.set_webhook(
        tid, hook["url"], hook["secret"], hook["events"], app.clock.now_ms(), guarded=guarded
    )
    app.subs.set_tenant(tid, hook["events"])
    await _webhook_changed(app, tid)


async def _webhook_changed(app: Any, tid: str) -> None:
    dispatcher = app.extras.get("webhooks")
    if dispatcher is not None:
        # Events waiting on the old address go to the new one now (or die if it is gone).
        await dispatcher.webhook_changed(tid)


def _webhook_json(hook: dict[str, Any]) -> dict[str, Any]:
    # The secret is never shown again: it is write-only, like a password.
    return {"url": hook["url"], "secret": "***", "events": hook["events"]}


@table.put("/v1/tenants/{id}/webhook")
async def put_webhook(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    hook = webhook_fields(
        await json_body(request, allowed={"url": str, "secret": str, "events": list})
    )
    await set_webhook(request, tid, hook)
    return ok(_webhook_json(hook))


@table.get("/v1/tenants/{id}/webhook")
async def get_webhook(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    hook = (await request.app[APP].store.webhooks()).get(tid)
    if hook is None:
        raise ApiError(404, "webhook_not_found", "this tenant has no webhook")
    return ok(_webhook_json(hook))


@table.delete("/v1/tenants/{id}/webhook")
async def delete_webhook(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    app = request.app[APP]
    if not await app.store.delete_webhook(tid):
        raise ApiError(404, "webhook_not_found", "this tenant has no webhook")
    app.subs.remove_tenant(tid)
    await _webhook_changed(app, tid)
    return ok({"deleted": True})


def _dispatcher(request: web.Request) -> Any:
    dispatcher = request.app[APP].extras.get("webhooks")
    if dispatcher is None:
        raise ApiError(503, "webhooks_unavailable", "webhook delivery is not running")
    return dispatcher


@table.get("/v1/tenants/{id}/webhook/dead")
async def dead_events(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    limit = int_param(request, "limit", 100, 1, MAX_LIST)
    events = await _dispatcher(request).dead(tid, limit)
    if request.get(TOKEN_TENANT) is not None:
        # A tenant sees the receiver's status code and nothing else: connection errors
        # (refused, timed out, resolved to ...) would make the webhook a network scanner.
        for ev in events:
            ev["last_error"] = _status_only(ev.get("last_error"))
    return ok({"events": events})


def _status_only(error: str | None) -> str | None:
    if error is None:
        return None
    m = re.match(r"HTTP [0-9]{3}", error)
    return m.group(0) if m else "no HTTP response"


@table.post("/v1/tenants/{id}/webhook/replay")
async def replay_dead(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    await no_body(request)
    return ok({"replayed": await _dispatcher(request).replay(tid)}, 202)
