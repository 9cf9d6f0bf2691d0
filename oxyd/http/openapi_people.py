"""The components the people, groups and settings routes answer with (their Operations in
oxyd/http/people.py and settings.py reference them by name), merged into GET /v1/openapi.json
by openapi.document()."""

from __future__ import annotations

from typing import Any

from oxyd.http.openapi_legacy import (
    BOOL,
    INT,
    MS,
    STR,
    _nullable,
    _obj,
    _ref,
)

NSTR = _nullable("string")
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


def extend(doc_paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Add the schemas the people routes answer with, and the settings to the tenant object
    (called on fresh copies by openapi.document()). The routes themselves are described by
    their Operations (oxyd/http/people.py, settings.py)."""
    schemas.update(SCHEMAS)
    tenant = schemas["Tenant"]
    schemas["Tenant"] = {
        **tenant,
        "properties": {**tenant["properties"], "settings": _ref("Settings")},
        "required": [*tenant.get("required", ()), "settings"],
    }
