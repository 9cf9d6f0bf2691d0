"""Hand-written OpenAPI descriptions of the routes not yet registered through operation.py.

Each route converted to an Operation (oxyd/http/operation.py) loses its entry here: the served
document (openapi.py) takes this, then overlays every Operation. New routes do not come here.
"""

from __future__ import annotations

from typing import Any

from oxyd.config import MEDIA_TYPES, WEBHOOK_EVENTS
from oxyd.model import ENGINES, State

TENANT_ID_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$"
TO_PATTERN = (
    r"^(\+?[0-9]{6,15}|[0-9A-Za-z._:-]{1,64}@(s\.whatsapp\.net|g\.us|lid|broadcast|newsletter))$"
)
SIM_ACTIONS = (
    "message",
    "receipt",
    "disconnect",
    "fail_connects",
    "stall",
    "mute",
    "logout",
    "replace",
    "ban",
    "outdated",
    "history",
    "contacts",
    "group",
    "call",
    "server",
    "identity",
    "offline",
    "online",
    "sent_log",
)

ERROR_TEXT = {
    400: "Malformed input (the message names the field)",
    401: "No token or an invalid token",
    403: "The route needs the admin token",
    404: "No such tenant (or not visible to this token)",
    409: "Conflict with the tenant's state",
    413: "Body too large",
    416: "Range not satisfiable",
    429: "Rate limit reached; see Retry-After",
    503: "Not available right now",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(tp: str) -> dict[str, Any]:
    return {"type": [tp, "null"]}


def _obj(props: dict[str, Any], required: tuple[str, ...] = (), closed: bool = False) -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
MS = _nullable("integer")

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": STR, "message": STR}, ("code", "message"))}, ("error",)),
    "Tenant": _obj(
        {
            "id": {"type": "string", "pattern": TENANT_ID_PATTERN},
            "engine": {"type": "string", "enum": list(ENGINES)},
            "state": {"type": "string", "enum": [str(s) for s in State]},
            "jid": _nullable("string"),
            "push_name": _nullable("string"),
            "state_since_ms": INT,
            "last_error": _nullable("string"),
            "failures": INT,
            "next_attempt_ms": MS,
            "last_event_ms": MS,
            "messages_stored": INT,
            "queue_depth": INT,
        },
        (
            "id",
            "engine",
            "state",
            "jid",
            "push_name",
            "state_since_ms",
            "last_error",
            "failures",
            "next_attempt_ms",
            "last_event_ms",
            "messages_stored",
            "queue_depth",
        ),
    ),
    "Message": _obj(
        {
            "id": STR,
            "chat": STR,
            "sender": STR,
            "from_me": BOOL,
            "sent_at_ms": INT,
            "kind": STR,
            "text": _nullable("string"),
            "push_name": _nullable("string"),
            "status": _nullable("string"),
            "delivered_at_ms": MS,
            "read_at_ms": MS,
            "played_at_ms": MS,
            "media": {"anyOf": [_ref("IncomingMedia"), {"type": "null"}]},
            "chat_alt": _nullable("string"),
            "sender_alt": _nullable("string"),
            "ref_id": _nullable("string"),
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
    "IncomingMedia": _obj(
        {
            "type": {"type": "string", "enum": list(MEDIA_TYPES)},
            "mime": _nullable("string"),
            "size": MS,
            "sha256": _nullable("string"),
            "filename": _nullable("string"),
            "caption": _nullable("string"),
            "duration_s": MS,
            "status": {"type": "string", "enum": ["pending", "stored", "failed", "skipped"]},
            "reason": _nullable("string"),
            "url": _nullable("string"),
        },
        ("type", "status", "url"),
    ),
    "Chat": _obj(
        {
            "jid": STR,
            "name": _nullable("string"),
            "last_message_ms": MS,
            "unread_count": INT,
            "message_count": INT,
        },
        ("jid", "name", "last_message_ms", "unread_count", "message_count"),
    ),
    "WebhookIn": _obj(
        {
            "url": {"type": "string", "maxLength": 2048},
            "secret": {"type": "string", "minLength": 1, "maxLength": 512},
            "events": {
                "type": ["array", "null"],
                "items": {"type": "string", "enum": list(WEBHOOK_EVENTS)},
            },
        },
        ("url", "secret"),
        closed=True,
    ),
    "WebhookOut": _obj(
        {"url": STR, "secret": {"const": "***"}, "events": {"type": ["array", "null"]}},
        ("url", "secret", "events"),
    ),
    "Media": _obj(
        {
            "type": {"type": "string", "enum": ["image", "video", "audio", "document"]},
            "data_b64": {"type": "string", "description": "the file, base64"},
            "caption": _nullable("string"),
            "filename": _nullable("string"),
            "mime": _nullable("string"),
        },
        ("type", "data_b64"),
        closed=True,
    ),
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        resp = _json(_ref("Error"), ERROR_TEXT[status])
        if status == 429:
            resp["headers"] = {"Retry-After": {"schema": INT, "description": "seconds to wait"}}
        out[str(status)] = resp
    return out


ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": TENANT_ID_PATTERN},
}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 100")
CURSOR = _query("cursor", STR, "next_cursor of the previous page")


def _op(
    summary: str,
    ok_status: int,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    tenant: bool = True,
    open_: bool = False,
    admin: bool = False,
    reads_body: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary + (" (admin token only)" if admin else "")}
    all_params = ([ID_PARAM] if tenant else []) + (params or [])
    if all_params:
        op["parameters"] = all_params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    statuses = set(errors)
    if not open_:
        statuses.add(401)
    if admin:
        statuses.add(403)
    if tenant:
        statuses |= {400, 404}
    if body is not None or reads_body:  # bodies are parsed: malformed 400, oversized 413
        statuses |= {400, 413}
    op["responses"] = {str(ok_status): ok, **_errors(*sorted(statuses))}
    if open_:
        op["security"] = []
    return op


TENANT_OK = _json(_ref("Tenant"), "The tenant object")
READY = _json(_obj({"status": STR, "checks": {"type": "object"}}, ("status", "checks")))


def _archive_ops() -> dict[str, Any]:
    """The tenant archive (a tar), by hand: export from one daemon, import into another."""
    tar = {"schema": {"type": "string", "format": "binary"}}
    get = _op(
        "Export the tenant's archive (its client pauses while the snapshot is taken)",
        200,
        {"description": "The archive", "content": {"application/x-tar": tar}},
        (),
        admin=True,
    )
    put = _op(
        "Import a tenant archive (made by GET .../archive or a cluster move) and start it",
        201,
        TENANT_OK,
        (409,),
        admin=True,
        reads_body=True,
    )
    put["requestBody"] = {"required": True, "content": {"application/x-tar": tar}}
    return {"get": get, "put": put}


_NE = {"type": "string", "minLength": 1}  # the simulator refuses empty strings
_STRS = {"type": "array", "items": _NE}
# One variant per action (the fields each action takes; the simulator checks them again).
SIMULATE_VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "message": (
        {
            "chat": _NE,
            "text": _NE,
            "count": {"type": "integer", "minimum": 1, "maximum": 100_000},
            "id": _NE,
            "from_me": BOOL,
            "media": {"type": "object"},
            "expired": BOOL,
        },
        ("chat",),
    ),
    "receipt": (
        {
            "ids": {"type": "array", "items": STR, "minItems": 1},
            "type": {"type": "string", "enum": ["delivered", "read", "played"]},
            "chat": _NE,
        },
        ("ids", "type", "chat"),
    ),
    "disconnect": ({}, ()),
    "fail_connects": ({"count": {"type": "integer", "minimum": 0, "maximum": 100_000}}, ("count",)),
    "stall": ({}, ()),
    "logout": ({}, ()),
    "replace": ({}, ()),
    "ban": ({"expire_s": {"type": "number", "minimum": 0, "maximum": 10**8}}, ("expire_s",)),
    "outdated": ({}, ()),
    "history": (
        {
            # and chats x messages at most 1,000,000 (checked by the simulator: 400)
            "chats": {"type": "integer", "minimum": 0, "maximum": 10_000},
            "messages": {"type": "integer", "minimum": 0, "maximum": 10_000},
        },
        ("chats", "messages"),
    ),
    "contacts": ({"phones": _STRS, "names": {"type": "object"}, "pictures": BOOL}, ("phones",)),
    "group": (
        {"jid": _NE, "subject": _NE, "participants": _STRS, "description": STR, "admin": BOOL},
        ("jid", "subject", "participants"),
    ),
    "call": ({"from": _NE, "video": BOOL}, ("from",)),
    "server": ({}, ()),
    "identity": ({"phone": _NE, "lid": _NE}, ("phone",)),
    "offline": ({}, ()),
    "online": ({}, ()),
    "sent_log": ({}, ()),
}
SIMULATE_BODY = {
    "type": "object",
    "required": ["action"],
    "properties": {"action": {"type": "string", "enum": list(SIMULATE_VARIANTS)}},
    "oneOf": [
        _obj(
            {
                "action": {"const": name},
                # An optional field sent as null counts as left out (simulator.actions.field).
                **{
                    k: v if k in required else {"anyOf": [v, {"type": "null"}]}
                    for k, v in props.items()
                },
            },
            ("action", *required),
            closed=True,
        )
        for name, (props, required) in SIMULATE_VARIANTS.items()
    ],
    "discriminator": {"propertyName": "action"},
}
# A message needs a text unless it carries media.
SIMULATE_BODY["oneOf"][0]["anyOf"] = [{"required": ["text"]}, {"required": ["media"]}]


def paths() -> dict[str, Any]:
    return {
        "/v1/tenants/{id}/archive": _archive_ops(),
        "/v1/tenants/{id}/simulate": {
            "post": _op(
                "Simulator tenants: drive the simulated phone (design §7, §15)",
                202,
                _json(_obj({"ok": {"const": True}}, ("ok",))),
                (409,),
                body=SIMULATE_BODY,
            )
        },
    }
