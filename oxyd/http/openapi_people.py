"""The OpenAPI description of the people, groups and settings routes (oxyd/http/people.py,
oxyd/http/settings.py), merged into GET /v1/openapi.json by openapi.document()."""

from __future__ import annotations

from typing import Any

from oxyd.http.openapi_legacy import (
    BOOL,
    CURSOR,
    INT,
    LIMIT,
    MS,
    STR,
    _json,
    _nullable,
    _obj,
    _op,
    _ref,
)

NSTR = _nullable("string")
ACTIONS = ("add", "remove", "promote", "demote")
REFRESH = {
    "name": "refresh",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
    "description": "ask WhatsApp (or the device) again instead of the stored copy",
}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


JID_PARAM = {"name": "jid", "in": "path", "required": True, "schema": STR}
GROUP_PARAM = {
    "name": "jid",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[0-9]{1,40}(-[0-9]{1,20})?@g\.us$"},
}
TIMEOUT = {
    "504": _json(_ref("Error"), "WhatsApp did not answer in time"),
}

SCHEMAS: dict[str, Any] = {
    "Settings": _obj(
        {"reject_calls": BOOL, "mark_online": BOOL, "proxy": NSTR},
        ("reject_calls", "mark_online", "proxy"),
    ),
    "SettingsIn": _obj(
        {
            "reject_calls": {"type": ["boolean", "null"]},
            "mark_online": {"type": ["boolean", "null"]},
            "proxy": {
                "type": ["string", "null"],
                "description": "socks5:// or http:// URL with host and port (admin only)",
            },
        },
        closed=True,
    ),
    "LookupResult": _obj(
        {"phone": STR, "on_whatsapp": BOOL, "jid": NSTR, "lid": NSTR},
        ("phone", "on_whatsapp", "jid", "lid"),
    ),
    "Contact": _obj(
        {
            "jid": STR,
            "phone": NSTR,
            "lid": NSTR,
            "push_name": NSTR,
            "name": NSTR,
            "first_name": NSTR,
            "business_name": NSTR,
            "updated_at_ms": MS,
        },
        ("jid", "phone", "lid"),
    ),
    "Participant": _obj(
        {
            "jid": STR,
            "lid": NSTR,
            "phone": NSTR,
            "role": {"type": "string", "enum": ["member", "admin", "superadmin"]},
        },
        ("jid", "role"),
    ),
    "ParticipantResult": _obj(
        {"jid": STR, "ok": BOOL, "error": NSTR, "code": _nullable("integer"), "role": NSTR},
        ("jid", "ok", "error"),
    ),
    "Group": _obj(
        {
            "jid": STR,
            "subject": NSTR,
            "description": NSTR,
            "owner": NSTR,
            "created_at_ms": MS,
            "announce": BOOL,
            "locked": BOOL,
            "size": INT,
            "participants": {"type": "array", "items": _ref("Participant")},
            "results": {"type": "array", "items": _ref("ParticipantResult")},
        },
        ("jid", "subject", "participants"),
    ),
}


def _engine_op(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """An operation that reaches WhatsApp: 409 not connected, 429 rate limit, 504 timeout."""
    op = _op(*args, **kwargs)
    op["responses"].update(TIMEOUT)
    return op


def paths() -> dict[str, Any]:
    groups = {"type": "array", "items": _ref("Group")}
    invite = _json(_obj({"jid": STR, "link": STR}, ("jid", "link")))
    return {
        "/v1/tenants/{id}/lookup": {
            "post": _engine_op(
                "Which numbers are on WhatsApp (cached for lookup.cache_s)",
                200,
                _json(_obj({"results": _array("LookupResult")}, ("results",))),
                (409, 429),
                body=_obj(
                    {"phones": {"type": "array", "items": STR, "minItems": 1, "maxItems": 50}},
                    ("phones",),
                    closed=True,
                ),
            )
        },
        "/v1/tenants/{id}/contacts": {
            "get": _op(
                "Contacts the store knows (push, saved and business names), by JID",
                200,
                _json(
                    _obj(
                        {
                            "contacts": {"type": "array", "items": _ref("Contact")},
                            "next_cursor": NSTR,
                        },
                        ("contacts", "next_cursor"),
                    )
                ),
                (409,),
                params=[LIMIT, CURSOR, REFRESH],
            )
        },
        "/v1/tenants/{id}/contacts/{jid}": {
            "get": _op(
                "One contact, with its other identity (lid of a phone JID, phone of a LID)",
                200,
                _json(_ref("Contact")),
                (409, 429),
                params=[JID_PARAM, REFRESH],
            )
        },
        "/v1/tenants/{id}/contacts/{jid}/picture": {
            "get": _engine_op(
                "The contact's profile picture (cached with its WhatsApp picture id)",
                200,
                {"description": "The image", "content": {"image/*": {"schema": {}}}},
                (409, 429),
                params=[JID_PARAM],
            )
        },
        "/v1/tenants/{id}/groups": {
            "get": _engine_op(
                "The account's groups (cached; refreshed on group events or ?refresh=true)",
                200,
                _json(_obj({"groups": groups}, ("groups",))),
                (409,),
                params=[REFRESH],
            ),
            "post": _engine_op(
                "Create a group",
                201,
                _json(_ref("Group")),
                (409, 429),
                body=_obj(
                    {"subject": STR, "participants": {"type": "array", "items": STR}},
                    ("subject",),
                    closed=True,
                ),
            ),
        },
        "/v1/tenants/{id}/groups/join": {
            "post": _engine_op(
                "Join a group by its invite link",
                200,
                _json(_ref("Group")),
                (403, 409, 429),
                body=_obj({"invite": STR}, ("invite",), closed=True),
            )
        },
        "/v1/tenants/{id}/groups/{jid}": {
            "get": _engine_op(
                "A group: subject, description, participants with roles",
                200,
                _json(_ref("Group")),
                (409,),
                params=[GROUP_PARAM],
            )
        },
        "/v1/tenants/{id}/groups/{jid}/participants": {
            "post": _engine_op(
                "Add, remove, promote or demote participants (a result for each)",
                200,
                _json(
                    _obj(
                        {
                            "jid": STR,
                            "action": STR,
                            "results": {"type": "array", "items": _ref("ParticipantResult")},
                            "group": _ref("Group"),
                        },
                        ("jid", "action", "results"),
                    )
                ),
                (403, 409, 429),
                params=[GROUP_PARAM],
                body=_obj(
                    {
                        "action": {"type": "string", "enum": list(ACTIONS)},
                        "participants": {"type": "array", "items": STR, "minItems": 1},
                    },
                    ("action", "participants"),
                    closed=True,
                ),
            )
        },
        "/v1/tenants/{id}/groups/{jid}/invite": {
            "get": _engine_op(
                "The group's invite link", 200, invite, (403, 409), params=[GROUP_PARAM]
            ),
            "delete": _engine_op(
                "Reset the invite link (the old one stops working)",
                200,
                invite,
                (403, 409, 429),
                params=[GROUP_PARAM],
            ),
        },
        "/v1/tenants/{id}/groups/{jid}/leave": {
            "post": _engine_op(
                "Leave the group",
                200,
                _json(_obj({"jid": STR, "left": BOOL}, ("jid", "left"))),
                (403, 409, 429),
                params=[GROUP_PARAM],
                reads_body=True,
            )
        },
    }


def patch_tenant() -> dict[str, Any]:
    return _op(
        "Change the tenant's settings (proxy: admin only)",
        200,
        _json(_ref("Tenant"), "The tenant object"),
        (403,),
        body=_ref("SettingsIn"),
    )


def extend(doc_paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Add these routes and schemas, the PATCH on the tenant, and the settings to the tenant
    object (called on fresh copies by openapi.document()). POST /v1/tenants takes the settings
    from its Operation (settings.SETTINGS)."""
    doc_paths.update(paths())
    doc_paths.setdefault("/v1/tenants/{id}", {})["patch"] = patch_tenant()
    schemas.update(SCHEMAS)
    tenant = schemas["Tenant"]
    schemas["Tenant"] = {
        **tenant,
        "properties": {**tenant["properties"], "settings": _ref("Settings")},
        "required": [*tenant.get("required", ()), "settings"],
    }
