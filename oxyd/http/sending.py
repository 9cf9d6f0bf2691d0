"""HTTP API for sending (design §12): queue, status, cancel/revoke, reactions, edits, read
marks and presence. Every send is queued durably and answered 202 before it goes out.

Each route's Operation validates its input with the schemas of send_body.py; the handlers do
what no schema can (the message a reaction, edit or reply refers to must exist here)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from oxyd.http import send_body
from oxyd.http import shapes as s
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok
from oxyd.outgoing import KINDS, Outgoing, new_wa_id
from oxyd.sender import Sender, SendError, request_hash

table = web.RouteTableDef()

MAX_WAIT_S = 30
MSG_ID = {"msg_id": s.string(description="the id of a message (sent or received)")}
CHAT = {"chat": send_body.JID}
# Every string of it is a key: 1 to 255 printable ASCII characters.
IDEMPOTENCY = {
    "Idempotency-Key": s.string(
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="must be 1 to 255 printable ASCII characters; the same key and body"
        " within 24 h return the first answer",
    )
}
WAIT = {
    "wait": {
        **s.number(0, MAX_WAIT_S),
        "description": f"must be seconds between 0 and {MAX_WAIT_S}: wait that long for the"
        " message to leave the queue (200), else 202",
    }
}
QUEUED = s.obj(
    {
        "id": s.STR,
        "status": s.STR,
        "chat": s.STR,
        "kind": s.string(enum=KINDS),
        "queued_at_ms": s.INT,
        "ref_id": s.nullable(s.STR),
    },
    ("id", "status", "chat", "kind", "queued_at_ms"),
    closed=False,
)
# A message this tenant sent (its queue row) or received (the stored message).
MESSAGE = s.obj(
    {
        "id": s.STR,
        "status": s.nullable(s.STR),
        "chat": s.STR,
        "kind": s.STR,
        "queued_at_ms": s.INT,
        "sent_at_ms": s.MS,
        "delivered_at_ms": s.MS,
        "read_at_ms": s.MS,
        "error": s.nullable(
            s.string(
                description="why it failed or was cancelled: `<code>: <sentence>` (outcome_unknown,"
                " not_on_whatsapp, tenant_parked, send_failed, tenant_removed, ...)"
            )
        ),
    },
    ("id", "status", "chat", "kind"),
    closed=False,
)
QUEUED_OK = s.json_response(QUEUED, "Queued (or the first answer of this Idempotency-Key)")
SENT_OK = s.json_response(MESSAGE, "Left the queue within ?wait: the message with its status")
QUEUE = dict(
    ok=(202, QUEUED_OK),
    errors=(409, 429),
    responses={200: SENT_OK},
    query=WAIT,
    headers=IDEMPOTENCY,
    field_codes={"Idempotency-Key": "invalid_idempotency_key"},
)


def _sender(request: web.Request) -> Sender:
    return request.app[APP].supervisor.sending


async def _queue(request: web.Request, inp: Input, out: Outgoing) -> web.Response:
    """Queue (or replay an Idempotency-Key's first answer); with ?wait=S, answer 200 once the
    message left the queue, else 202."""
    tid, sender = inp.tenant, _sender(request)
    assert tid is not None
    key = inp.headers.get("Idempotency-Key")
    idem = None
    if key is not None:
        idem = (
            key,
            request_hash(request.method, request.match_info.route.resource.canonical, inp.body),
        )
    try:
        status, answer = await sender.enqueue(tid, out, idem)
        wait_s = inp.query.get("wait")
        if wait_s:
            await sender.wait(tid, answer["id"], wait_s)
            now = await sender.status(tid, answer["id"])
            if now is not None and now["status"] != "queued":
                return ok(now, 200)
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None
    return ok(answer, status)


async def _ref(request: web.Request, inp: Input) -> dict[str, Any]:
    try:
        return await _sender(request).ref(inp.tenant, inp.path["msg_id"])
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None


def _ref_of(ref: dict[str, Any]) -> dict[str, Any]:
    return {"id": ref["id"], "sender": ref["sender"], "from_me": ref["from_me"]}


def _media_limit_bytes(app: Any) -> int:
    # Media travels base64-encoded in the JSON body: only a body carrying media may be larger
    # than http.max_body_bytes (send_body.precheck).
    return max(app.cfg.send.max_media_bytes * 4 // 3 + 65536, app.cfg.http.max_body_bytes)


def _precheck(app: Any, body: dict[str, Any], size: int) -> None:
    send_body.precheck(app.cfg.http.max_body_bytes, app.cfg.send.max_media_bytes, body, size)


@operation(
    table.post,
    "/v1/tenants/{id}/messages",
    "Queue a message of any kind",
    description="`to` and exactly one of text, media, location, contact, poll. After the"
    " schema: `reply_to` must be a message of this tenant in the same chat, a sticker must be"
    " a WebP image and a voice note audio that converts (else 400 naming the field); media"
    " past send.max_media_bytes is 413 media_too_large.",
    body=send_body.SEND,
    limit_bytes=_media_limit_bytes,
    precheck=_precheck,
    **QUEUE,
)
async def send_message(request: web.Request, inp: Input) -> web.Response:
    out = await send_body.parse(inp.body, request.app[APP].cfg.send.max_media_bytes)
    reply = out.body.get("reply_to")
    if reply is not None:
        try:
            ref = await _sender(request).ref(inp.tenant, reply["id"])
        except SendError:
            raise ApiError(
                400, "invalid_field", f"reply_to: no message {reply['id']!r} in this tenant"
            ) from None
        if ref["chat"] != out.chat:
            raise ApiError(400, "invalid_field", "reply_to: that message is in another chat")
        reply.update(sender=ref["sender"], from_me=ref["from_me"], id=ref["id"])
    return await _queue(request, inp, out)


@operation(
    table.get,
    "/v1/tenants/{id}/messages/{msg_id}",
    "A message with its sending status",
    ok=(200, s.json_response(MESSAGE)),
    path_params=MSG_ID,
)
async def get_message(request: web.Request, inp: Input) -> web.Response:
    msg_id = inp.path["msg_id"]
    found = await _sender(request).status(inp.tenant, msg_id)
    if found is None:
        raise ApiError(404, "message_not_found", f"no message {msg_id!r}")
    return ok(found)


@operation(
    table.delete,
    "/v1/tenants/{id}/messages/{msg_id}",
    "Cancel a queued message (200) or revoke a sent one (202, queued)",
    ok=(200, s.json_response(MESSAGE, "Cancelled")),
    responses={202: s.json_response(QUEUED, "The revoke, queued")},
    errors=(409,),
    path_params=MSG_ID,
    body=s.obj({}),
    body_required=False,
)
async def delete_message(request: web.Request, inp: Input) -> web.Response:
    try:
        status, answer = await _sender(request).cancel(inp.tenant, inp.path["msg_id"])
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None
    return ok(answer, status)


@operation(
    table.post,
    "/v1/tenants/{id}/messages/{msg_id}/reaction",
    'React to a message ("" removes the reaction; queued)',
    body=send_body.REACTION,
    path_params=MSG_ID,
    **QUEUE,
)
async def react(request: web.Request, inp: Input) -> web.Response:
    ref = await _ref(request, inp)
    if ref["status"] in ("failed", "cancelled"):
        raise ApiError(409, "not_sent", f"the message is {ref['status']}")
    body = {"ref": _ref_of(ref), "emoji": inp.body["emoji"]}
    return await _queue(request, inp, Outgoing(new_wa_id(), ref["chat"], "reaction", body))


@operation(
    table.patch,
    "/v1/tenants/{id}/messages/{msg_id}",
    "Edit a sent text (the edit is queued)",
    body=send_body.EDIT,
    path_params=MSG_ID,
    **QUEUE,
)
async def edit(request: web.Request, inp: Input) -> web.Response:
    ref = await _ref(request, inp)
    if not ref["from_me"] or ref["kind"] not in ("text", "edit"):
        raise ApiError(409, "not_editable", "only a text this tenant sent can be edited")
    if ref["status"] in ("failed", "cancelled", "revoked"):
        raise ApiError(409, "not_editable", f"the message is {ref['status']}")
    body = {"ref": _ref_of(ref), "text": inp.body["text"]}
    return await _queue(request, inp, Outgoing(new_wa_id(), ref["chat"], "edit", body))


CHAT_CODES = {"chat": "invalid_field"}


@operation(
    table.post,
    "/v1/tenants/{id}/chats/{chat}/read",
    "Mark a chat read up to its newest message (or up_to)",
    ok=(
        200,
        s.json_response(s.obj({"chat": s.STR, "marked": s.INT}, ("chat", "marked"), closed=False)),
    ),
    errors=(409,),
    path_params=CHAT,
    field_codes=CHAT_CODES,
    body=send_body.READ,
    body_required=False,
)
async def mark_read(request: web.Request, inp: Input) -> web.Response:
    chat = send_body.jid(inp.path["chat"])
    try:
        return ok(await _sender(request).mark_read(inp.tenant, chat, inp.body.get("up_to")))
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None


@operation(
    table.post,
    "/v1/tenants/{id}/chats/{chat}/presence",
    "Show typing or recording in a chat",
    ok=(
        200,
        s.json_response(s.obj({"chat": s.STR, "state": s.STR}, ("chat", "state"), closed=False)),
    ),
    errors=(409,),
    path_params=CHAT,
    field_codes=CHAT_CODES,
    body=send_body.PRESENCE,
)
async def presence(request: web.Request, inp: Input) -> web.Response:
    chat = send_body.jid(inp.path["chat"])
    try:
        return ok(await _sender(request).presence(inp.tenant, chat, inp.body["state"]))
    except SendError as e:
        raise ApiError(e.status, e.code, e.message) from None
