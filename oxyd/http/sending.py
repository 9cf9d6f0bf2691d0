"""HTTP API for sending (design §12): queue, status, cancel/revoke, reactions, edits, read
marks and presence. Every send is queued durably and answered 202 before it goes out."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from oxyd.http import send_body
from oxyd.http.access import tenant_id
from oxyd.http.inputs import (
    body_limit_bytes,
    json_body,
    no_body,
    parse_json_object,
    query_param,
    read_limited,
)
from oxyd.http.keys import APP
from oxyd.http.replies import ApiError, ok
from oxyd.outgoing import Outgoing, new_wa_id
from oxyd.sender import Sender, SendError, request_hash

table = web.RouteTableDef()

MAX_WAIT_S = 30.0
KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


def _sender(request: web.Request) -> Sender:
    return request.app[APP].supervisor.sending


def _idempotency(request: web.Request, body: Any) -> tuple[str, str] | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not KEY_RE.fullmatch(key):
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key: 1 to 255 printable ASCII characters"
        )
    return key, request_hash(request.method, request.match_info.route.resource.canonical, body)


def _wait_s(request: web.Request) -> float | None:
    raw = query_param(request, "wait")
    if raw is None:
        return None
    try:
        wait_s = float(raw)
    except ValueError:
        wait_s = -1.0
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise ApiError(400, "invalid_parameter", f"wait: seconds between 0 and {MAX_WAIT_S:g}")
    return wait_s


async def _queue(request: web.Request, tid: str, out: Outgoing, body: Any) -> web.Response:
    """Queue (or replay an Idempotency-Key's first answer); with ?wait=S, answer 200 once the
    message left the queue, else 202."""
    wait_s = _wait_s(request)
    sender = _sender(request)
    try:
        status, answer = await sender.enqueue(tid, out, _idempotency(request, body))
        if wait_s:
            await sender.wait(tid, answer["id"], wait_s)
            now = await sender.status(tid, answer["id"])
            if now is not None and now["status"] != "queued":
                return ok(now, 200)
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None
    return ok(answer, status)


async def _ref(request: web.Request, tid: str) -> dict[str, Any]:
    try:
        return await _sender(request).ref(tid, request.match_info["msg_id"])
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None


def _ref_of(ref: dict[str, Any]) -> dict[str, Any]:
    return {"id": ref["id"], "sender": ref["sender"], "from_me": ref["from_me"]}


@table.post("/v1/tenants/{id}/messages")
async def send_message(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    app = request.app[APP]
    # Media travels base64-encoded in the JSON body, so only a body carrying media may exceed
    # http.max_body_bytes (a 2 MiB text body is still 413).
    limit = body_limit_bytes(request)
    raw = await read_limited(request, max(app.cfg.send.max_media_bytes * 4 // 3 + 65536, limit))
    body = parse_json_object(raw, required=True)
    if len(raw) > limit and not isinstance(body.get("media"), dict):
        raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes")
    out = await send_body.parse(body, app.cfg.send.max_media_bytes)
    reply = out.body.get("reply_to")
    if reply is not None:
        try:
            ref = await _sender(request).ref(tid, reply["id"])
        except SendError:
            raise ApiError(
                400, "invalid_field", f"reply_to: no message {reply['id']!r} in this tenant"
            ) from None
        if ref["chat"] != out.chat:
            raise ApiError(400, "invalid_field", "reply_to: that message is in another chat")
        reply.update(sender=ref["sender"], from_me=ref["from_me"], id=ref["id"])
    return await _queue(request, tid, out, body)


@table.get("/v1/tenants/{id}/messages/{msg_id}")
async def get_message(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    msg_id = request.match_info["msg_id"]
    found = await _sender(request).status(tid, msg_id)
    if found is None:
        raise ApiError(404, "message_not_found", f"no message {msg_id!r}")
    return ok(found)


@table.delete("/v1/tenants/{id}/messages/{msg_id}")
async def delete_message(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    await no_body(request)
    try:
        status, answer = await _sender(request).cancel(tid, request.match_info["msg_id"])
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None
    return ok(answer, status)


@table.post("/v1/tenants/{id}/messages/{msg_id}/reaction")
async def react(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    body = await json_body(request, allowed={"emoji": str}, required=("emoji",))
    emoji = send_body.emoji(body)
    ref = await _ref(request, tid)
    if ref["status"] in ("failed", "cancelled"):
        raise ApiError(409, "not_sent", f"the message is {ref['status']}")
    out = Outgoing(new_wa_id(), ref["chat"], "reaction", {"ref": _ref_of(ref), "emoji": emoji})
    return await _queue(request, tid, out, body)


@table.patch("/v1/tenants/{id}/messages/{msg_id}")
async def edit(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    body = await json_body(request, allowed={"text": str}, required=("text",))
    text = send_body.text_field(body["text"], "text")
    ref = await _ref(request, tid)
    if not ref["from_me"] or ref["kind"] not in ("text", "edit"):
        raise ApiError(409, "not_editable", "only a text this tenant sent can be edited")
    if ref["status"] in ("failed", "cancelled", "revoked"):
        raise ApiError(409, "not_editable", f"the message is {ref['status']}")
    out = Outgoing(new_wa_id(), ref["chat"], "edit", {"ref": _ref_of(ref), "text": text})
    return await _queue(request, tid, out, body)


def _chat(request: web.Request) -> str:
    return send_body.jid(request.match_info["chat"], "chat")


@table.post("/v1/tenants/{id}/chats/{chat}/read")
async def mark_read(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    chat = _chat(request)
    body = await json_body(request, allowed={"up_to": str}, optional_body=True)
    try:
        return ok(await _sender(request).mark_read(tid, chat, body.get("up_to")))
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None


@table.post("/v1/tenants/{id}/chats/{chat}/presence")
async def presence(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    chat = _chat(request)
    state = send_body.presence_state(
        await json_body(request, allowed={"state": str}, required=("state",))
    )
    try:
        return ok(await _sender(request).presence(tid, chat, state))
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None
