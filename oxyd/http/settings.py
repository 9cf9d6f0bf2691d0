"""PATCH /v1/tenants/{id}: a tenant's settings (design §13), also accepted by POST /v1/tenants.

`reject_calls` (incoming calls are declined, `call.rejected` event), `mark_online` (presence
"available" while connected, so read receipts and typing show), and `proxy` (the tenant's
network path to WhatsApp; `neonize.proxy` is the default when unset). A proxy is shown with its
password masked, and only the admin may set it: it decides where a session's traffic goes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from oxyd.http import shapes as s
from oxyd.http.access import require_admin
from oxyd.http.inputs import body_limit_bytes, check_fields, parse_json_object, read_limited
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok
from oxyd.proxy import proxy_error

table = web.RouteTableDef()

FIELDS: dict[str, type | tuple] = {"reject_calls": bool, "mark_online": bool, "proxy": str}
MAX_PROXY_CHARS = 1024
_PORT = r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_USERINFO = r"([A-Za-z0-9._~%!$&'()*+,;=-]+(:[A-Za-z0-9._~%!$&'()*+,;=-]*)?@)?"
# What proxy_url() accepts, as the schema says it (a strict subset: no IPv6 literals).
PROXY_PATTERN = (
    r"^(socks5|http)://" + _USERINFO + r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*:" + _PORT + "/?$"
)
PROXY = {
    "type": "string",
    "maxLength": MAX_PROXY_CHARS,
    "pattern": PROXY_PATTERN,
    "description": "must be a socks5:// or http:// URL with host and port",
}


def proxy_url(value: str, prefix: str = "") -> str:
    """A `socks5://` or `http://` URL with a host and a port (oxyd/proxy.py); else 400."""
    why = proxy_error(value) if len(value) <= MAX_PROXY_CHARS else "is too long"
    if why is None and (not value.isprintable() or " " in value):
        why = "must not contain spaces or control characters"
    if why is not None:
        raise ApiError(
            400,
            "invalid_field",
            f"{prefix}proxy: {why}, e.g. socks5://user:password@proxy.example:1080",
        )
    return value.rstrip("/")


def settings_fields(body: dict[str, Any], request: web.Request, prefix: str = "") -> dict:
    """The settings in `body` (only FIELDS keys), checked; `proxy: null` clears the proxy."""
    changes = {k: body[k] for k in FIELDS if k in body}
    check_fields(changes, FIELDS, prefix=prefix)
    for key in ("reject_calls", "mark_online"):
        if key in changes and changes[key] is None:
            raise ApiError(400, "invalid_field", f"{prefix}{key}: must be a boolean")
    if "proxy" in changes:
        require_admin(request)
        if changes["proxy"] is not None:
            changes["proxy"] = proxy_url(changes["proxy"], prefix)
    return changes


@operation(
    table.patch,
    "/v1/tenants/{id}",
    "Change the tenant's settings (proxy: admin token only)",
    ok=(200, s.json_response(s.ref("Tenant"), "The tenant object")),
    errors=(403,),
    body=s.obj(
        {
            "reject_calls": s.BOOL,
            "mark_online": s.BOOL,
            "proxy": s.nullable(PROXY),
        },
        description="at least one setting",
    )
    | {"minProperties": 1},
    # `"proxy": null` means "no proxy" here, not "left out": the handler reads the body.
    raw_body=True,
)
async def patch_tenant(request: web.Request, inp: Input) -> web.Response:
    raw = await read_limited(request, body_limit_bytes(request))
    body = parse_json_object(raw, required=True)
    check_fields(body, FIELDS)
    if not body:
        raise ApiError(400, "invalid_body", f"give at least one of {sorted(FIELDS)}")
    changes = settings_fields(body, request)
    return ok(await request.app[APP].supervisor.update_settings(inp.tenant, changes))


# The same fields as JSON Schema, for routes described by an Operation (POST /v1/tenants).
# A null proxy is the same as none; the proxy URL itself is checked by proxy_url().
SETTINGS: dict[str, Any] = {
    "reject_calls": {"type": "boolean"},
    "mark_online": {"type": "boolean"},
    "proxy": s.nullable(PROXY),
}
