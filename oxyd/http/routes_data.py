"""HTTP API v1 handlers for a tenant's data: messages, chats (design §6; sending is in
sending.py)."""

from __future__ import annotations

from aiohttp import web

from oxyd.http.access import tenant_id
from oxyd.http.inputs import (
    int_param,
    query_param,
)
from oxyd.http.keys import APP
from oxyd.http.replies import ApiError, ok

table = web.RouteTableDef()

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
