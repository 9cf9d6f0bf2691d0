"""The shapes answers share, published once under #/components/schemas of GET /v1/openapi.json
and referenced by name (shapes.ref) from the Operations of every route.

Answers are open objects (a later version may add fields); requests are closed (operation.py
refuses unknown fields), so request schemas live with their routes, not here.
"""

from __future__ import annotations

from typing import Any

from oxyd.config import MEDIA_TYPES
from oxyd.http import shapes as s
from oxyd.model import ENGINES, State

NSTR = s.nullable(s.STR)


def out(props: dict[str, s.Schema], required: tuple[str, ...] = ()) -> s.Schema:
    """An answer's object: these fields, more allowed."""
    return s.obj(props, required, closed=False)


def _all_required(props: dict[str, s.Schema]) -> s.Schema:
    return out(props, tuple(props))


SCHEMAS: dict[str, Any] = {
    "Error": out(
        {"error": out({"code": s.STR, "message": s.STR}, ("code", "message"))}, ("error",)
    ),
    "Tenant": _all_required(
        {
            "id": s.string(pattern=s.TENANT_ID_PATTERN),
            "engine": s.string(enum=ENGINES),
            "state": s.string(enum=[str(st) for st in State]),
            "jid": NSTR,
            "push_name": NSTR,
            "state_since_ms": s.INT,
            "last_error": NSTR,
            "failures": s.INT,
            "next_attempt_ms": s.MS,
            "last_event_ms": s.MS,
            "messages_stored": s.INT,
            "queue_depth": s.INT,
            "settings": s.ref("Settings"),
        }
    ),
    "Settings": _all_required({"reject_calls": s.BOOL, "mark_online": s.BOOL, "proxy": NSTR}),
    "Message": out(
        {
            "id": s.STR,
            "chat": s.STR,
            "sender": s.STR,
            "from_me": s.BOOL,
            "sent_at_ms": s.INT,
            "kind": s.STR,
            "text": NSTR,
            "push_name": NSTR,
            "status": NSTR,
            "delivered_at_ms": s.MS,
            "read_at_ms": s.MS,
            "played_at_ms": s.MS,
            "media": {"anyOf": [s.ref("IncomingMedia"), {"type": "null"}]},
            "chat_alt": NSTR,
            "sender_alt": NSTR,
            "ref_id": NSTR,
        },
        (
            "id",
            "chat",
            "sender",
            "from_me",
            "sent_at_ms",
            "kind",
            "text",
            "push_name",
            "status",
            "delivered_at_ms",
            "read_at_ms",
        ),
    ),
    "IncomingMedia": out(
        {
            "type": s.string(enum=MEDIA_TYPES),
            "mime": NSTR,
            "size": s.MS,
            "sha256": NSTR,
            "filename": NSTR,
            "caption": NSTR,
            "duration_s": s.MS,
            "status": s.string(enum=("pending", "stored", "failed", "skipped")),
            "reason": NSTR,
            "url": NSTR,
        },
        ("type", "status", "url"),
    ),
    "Chat": _all_required(
        {
            "jid": s.STR,
            "name": NSTR,
            "last_message_ms": s.MS,
            "unread_count": s.INT,
            "message_count": s.INT,
        }
    ),
    "WebhookOut": out(
        {"url": s.STR, "secret": {"const": "***"}, "events": {"type": ["array", "null"]}},
        ("url", "secret", "events"),
    ),
    "LookupResult": _all_required(
        {"phone": s.STR, "on_whatsapp": s.BOOL, "jid": NSTR, "lid": NSTR}
    ),
    "Contact": out(
        {
            "jid": s.STR,
            "phone": NSTR,
            "lid": NSTR,
            "push_name": NSTR,
            "name": NSTR,
            "first_name": NSTR,
            "business_name": NSTR,
            "updated_at_ms": s.MS,
        },
        ("jid", "phone", "lid"),
    ),
    "Participant": out(
        {
            "jid": s.STR,
            "lid": NSTR,
            "phone": NSTR,
            "role": s.string(enum=("member", "admin", "superadmin")),
        },
        ("jid", "role"),
    ),
    "ParticipantResult": out(
        {"jid": s.STR, "ok": s.BOOL, "error": NSTR, "code": s.MS, "role": NSTR},
        ("jid", "ok", "error"),
    ),
    "Group": out(
        {
            "jid": s.STR,
            "subject": NSTR,
            "description": NSTR,
            "owner": NSTR,
            "created_at_ms": s.MS,
            "announce": s.BOOL,
            "locked": s.BOOL,
            "size": s.INT,
            "participants": s.array(s.ref("Participant")),
            "results": s.array(s.ref("ParticipantResult")),
        },
        ("jid", "subject", "participants"),
    ),
}
