"""The OpenAPI description of the sending routes (sending.py), merged by openapi.document()."""

from __future__ import annotations

from typing import Any

from oxyd.http.openapi_legacy import BOOL, INT, MS, STR, TO_PATTERN, _json, _nullable, _obj, _op
from oxyd.http.send_body import MEDIA_TYPES, PRESENCE_STATES
from oxyd.outgoing import KINDS, MAX_CAPTION_CHARS

MSG_ID = {"name": "msg_id", "in": "path", "required": True, "schema": STR}
CHAT = {
    "name": "chat",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": TO_PATTERN},
}
KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "the same key and body within 24 h return the first answer",
}
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 0, "maximum": 30},
    "description": "seconds to wait for the message to leave the queue (200), else 202",
}
STATUS = {"type": "string"}
QUEUED = _obj(
    {
        "id": STR,
        "status": STATUS,
        "chat": STR,
        "kind": {"type": "string", "enum": list(KINDS)},
        "queued_at_ms": INT,
        "ref_id": STR,
    },
    ("id", "status", "chat", "queued_at_ms"),
)
OUTGOING = _obj(
    {
        "id": STR,
        "status": STATUS,
        "chat": STR,
        "kind": STR,
        "queued_at_ms": INT,
        "sent_at_ms": MS,
        "delivered_at_ms": MS,
        "read_at_ms": MS,
        "error": _nullable("string"),
    },
    ("id", "status", "chat", "kind"),
)
TEXT = {"type": "string", "minLength": 1, "maxLength": 65536}
SEND_BODY = _obj(
    {
        "to": {"type": "string", "pattern": TO_PATTERN},
        "text": TEXT,
        "media": _obj(
            {
                "type": {"type": "string", "enum": list(MEDIA_TYPES)},
                "data_b64": {"type": "string", "description": "the file, base64"},
                "mime": STR,
                "filename": STR,
                "caption": {"type": "string", "maxLength": MAX_CAPTION_CHARS},
            },
            ("type", "data_b64"),
            closed=True,
        ),
        "location": _obj(
            {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lng": {"type": "number", "minimum": -180, "maximum": 180},
                "name": STR,
                "address": STR,
            },
            ("lat", "lng"),
            closed=True,
        ),
        "contact": _obj({"name": STR, "phone": STR}, ("name", "phone"), closed=True),
        "poll": _obj(
            {
                "question": STR,
                "options": {"type": "array", "items": STR, "minItems": 2, "maxItems": 12},
                "multiple": BOOL,
            },
            ("question", "options"),
            closed=True,
        ),
        "reply_to": {"type": "string", "description": "id of a message in the same chat"},
        "mentions": {"type": "array", "items": STR, "maxItems": 100},
        "link_preview": BOOL,
    },
    ("to",),
    closed=True,
)
SEND_BODY["description"] = "`to` and exactly one of text, media, location, contact, poll"
SEND_BODY["oneOf"] = [{"required": [k]} for k in ("text", "media", "location", "contact", "poll")]


def paths() -> dict[str, Any]:
    queued = _json(QUEUED, "Queued (or the first answer of this Idempotency-Key)")
    return {
        "/v1/tenants/{id}/messages": {
            "post": {
                **_op(
                    "Queue a message of any kind (design §12)",
                    202,
                    queued,
                    (409, 429),
                    body=SEND_BODY,
                    params=[WAIT, KEY],
                ),
            }
        },
        "/v1/tenants/{id}/messages/{msg_id}": {
            "get": _op(
                "A message with its sending status",
                200,
                _json(OUTGOING),
                (),
                params=[MSG_ID],
            ),
            "delete": _op(
                "Cancel a queued message (200) or revoke a sent one (202, queued)",
                200,
                _json(OUTGOING),
                (409,),
                params=[MSG_ID],
                reads_body=True,
            ),
            "patch": _op(
                "Edit a sent text (the edit is queued)",
                202,
                queued,
                (409, 429),
                body=_obj({"text": TEXT}, ("text",), closed=True),
                params=[MSG_ID, KEY],
            ),
        },
        "/v1/tenants/{id}/messages/{msg_id}/reaction": {
            "post": _op(
                'React to a message ("" removes the reaction; queued)',
                202,
                queued,
                (409, 429),
                body=_obj({"emoji": {"type": "string", "maxLength": 32}}, ("emoji",), True),
                params=[MSG_ID, KEY],
            )
        },
        "/v1/tenants/{id}/chats/{chat}/read": {
            "post": _op(
                "Mark a chat read up to its newest message (or up_to)",
                200,
                _json(_obj({"chat": STR, "marked": INT}, ("chat", "marked"))),
                (409,),
                params=[CHAT],
                reads_body=True,
            )
        },
        "/v1/tenants/{id}/chats/{chat}/presence": {
            "post": _op(
                "Show typing or recording in a chat",
                200,
                _json(_obj({"chat": STR, "state": STR}, ("chat", "state"))),
                (409,),
                body=_obj(
                    {"state": {"type": "string", "enum": list(PRESENCE_STATES)}},
                    ("state",),
                    closed=True,
                ),
                params=[CHAT],
            )
        },
    }
