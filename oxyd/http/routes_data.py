"""HTTP API v1 handlers for a tenant's data: sending, messages, chats (design §6)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from aiohttp import web

from oxyd.engine import OutboundMedia
from oxyd.http.access import tenant_id
from oxyd.http.inputs import (
    body_limit_bytes,
    check_fields,
    int_param,
    parse_json_object,
    query_param,
    read_limited,
)
from oxyd.http.keys import APP
from oxyd.http.replies import ApiError, ok

table = web.RouteTableDef()

TO_RE = re.compile(
    r"\+?[0-9]{6,15}|[0-9A-Za-z._:-]{1,64}@(s\.whatsapp\.net|g\.us|lid|broadcast|newsletter)"
)
MEDIA_TYPES = ("image", "video", "audio", "document")
MAX_TEXT_CHARS = 65_536


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
