"""HTTP API v1 handlers for a tenant's webhook: set, show, delete, dead events, replay."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from oxyd import log
from oxyd.destinations import ForbiddenDestination
from oxyd.http import shapes as s
from oxyd.http.keys import APP, TOKEN_TENANT
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok

table = web.RouteTableDef()

MAX_LIST = 1000
HOOK_OUT = s.json_response(s.ref("WebhookOut"))


def normalized(hook: dict[str, Any]) -> dict[str, Any]:
    """A validated webhook body (shapes.WEBHOOK_IN) as stored: events sorted, once each."""
    events = hook.get("events")
    return {
        "url": hook["url"],
        "secret": hook["secret"],
        "events": sorted(set(events)) if events else None,
    }


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


@operation(
    table.put,
    "/v1/tenants/{id}/webhook",
    "Set the tenant's webhook",
    description="With a tenant token the URL must be a public address (400"
    " forbidden_destination), unless the operator set webhooks.allow_private.",
    ok=(200, HOOK_OUT),
    body=s.WEBHOOK_IN,
)
async def put_webhook(request: web.Request, inp: Input) -> web.Response:
    hook = normalized(inp.body)
    await set_webhook(request, inp.tenant, hook)
    return ok(_webhook_json(hook))


@operation(
    table.get,
    "/v1/tenants/{id}/webhook",
    "The tenant's webhook (secret masked)",
    ok=(200, HOOK_OUT),
    errors=(404,),
)
async def get_webhook(request: web.Request, inp: Input) -> web.Response:
    hook = (await request.app[APP].store.webhooks()).get(inp.tenant)
    if hook is None:
        raise ApiError(404, "webhook_not_found", "this tenant has no webhook")
    return ok(_webhook_json(hook))


@operation(
    table.delete,
    "/v1/tenants/{id}/webhook",
    "Remove the tenant's webhook",
    ok=(200, s.json_response(s.obj({"deleted": s.BOOL}, ("deleted",), closed=False))),
    errors=(404,),
)
async def delete_webhook(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    if not await app.store.delete_webhook(inp.tenant):
        raise ApiError(404, "webhook_not_found", "this tenant has no webhook")
    app.subs.remove_tenant(inp.tenant)
    await _webhook_changed(app, inp.tenant)
    return ok({"deleted": True})


def _dispatcher(request: web.Request) -> Any:
    dispatcher = request.app[APP].extras.get("webhooks")
    if dispatcher is None:
        raise ApiError(503, "webhooks_unavailable", "webhook delivery is not running")
    return dispatcher


@operation(
    table.get,
    "/v1/tenants/{id}/webhook/dead",
    "Dead webhook events, newest first",
    ok=(
        200,
        s.json_response(s.obj({"events": s.array({"type": "object"})}, ("events",), closed=False)),
    ),
    errors=(503,),
    query={"limit": s.integer(1, MAX_LIST, default=100)},
)
async def dead_events(request: web.Request, inp: Input) -> web.Response:
    events = await _dispatcher(request).dead(inp.tenant, inp.query["limit"])
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


@operation(
    table.post,
    "/v1/tenants/{id}/webhook/replay",
    "Queue every dead event again",
    ok=(202, s.json_response(s.obj({"replayed": s.INT}, ("replayed",), closed=False))),
    errors=(503,),
)
async def replay_dead(request: web.Request, inp: Input) -> web.Response:
    return ok({"replayed": await _dispatcher(request).replay(inp.tenant)}, 202)
