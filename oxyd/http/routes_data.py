"""HTTP API v1 handlers for a tenant's data: sending, messages, chats (design §6)."""

from __future__ import annotations

from aiohttp import web

from oxyd.http import shapes as s
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok
from oxyd.store.cursors import CHATS_CURSOR, MESSAGES_CURSOR, cursor_pattern

table = web.RouteTableDef()


# ---- reading ----


LIMIT = s.integer(1, 1000, default=100)
CURSOR_400 = "cursor: not a cursor this API returned"
CURSOR_CODES = {"cursor": "invalid_cursor"}


@operation(
    table.get,
    "/v1/tenants/{id}/messages",
    "Messages, newest first",
    ok=(200, s.json_response(s.page_of("messages", s.ref("Message")))),
    query={
        "chat": s.string(max_length=256, description="a chat JID; all chats if absent or empty"),
        "limit": LIMIT,
        "cursor": s.cursor(cursor_pattern(*MESSAGES_CURSOR)),
    },
    field_codes=CURSOR_CODES,
)
async def list_messages(request: web.Request, inp: Input) -> web.Response:
    q = inp.query
    try:
        msgs, nxt = await request.app[APP].store.messages(
            inp.tenant, q.get("chat") or None, q["limit"], q.get("cursor") or None
        )
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, "invalid_cursor", CURSOR_400) from None
    return ok({"messages": msgs, "next_cursor": nxt})


@operation(
    table.get,
    "/v1/tenants/{id}/chats",
    "Chats, most recent first",
    ok=(200, s.json_response(s.page_of("chats", s.ref("Chat")))),
    query={"limit": LIMIT, "cursor": s.cursor(cursor_pattern(*CHATS_CURSOR))},
    field_codes=CURSOR_CODES,
)
async def list_chats(request: web.Request, inp: Input) -> web.Response:
    q = inp.query
    try:
        chats, nxt = await request.app[APP].store.chats(
            inp.tenant, q["limit"], q.get("cursor") or None
        )
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, "invalid_cursor", CURSOR_400) from None
    return ok({"chats": chats, "next_cursor": nxt})
