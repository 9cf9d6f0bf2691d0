"""HTTP API v1 handlers for a tenant's webhook: set, show, delete, dead events, replay."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from oxyd import log
from oxyd.config import WEBHOOK_EVENTS
from oxyd.destinations import ForbiddenDestination
from oxyd.http.access import tenant_id
from oxyd.http.inputs import check_fields, int_param, json_body, no_body
from oxyd.http.keys import APP, TOKEN_TENANT
from oxyd.http.replies import ApiError, ok

table = web.RouteTableDef()

URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*")
MAX_URL_CHARS = 2048
MAX_SECRET_CHARS = 512
MAX_LIST = 1000
MAX_EVENT_TYPES = 64  # every event type fits many times over; more is not a real request


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
