"""Pairing a tenant's WhatsApp account (design §6): start pairing (QR or phone code), show the
current QR or code (JSON, or the QR as PNG), and unlink the device."""

from __future__ import annotations

import io

from aiohttp import web

from oxyd.http import shapes as s
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok
from oxyd.http.routes import TENANT_ACTION

table = web.RouteTableDef()

# What pair() accepts: leading +, spaces anywhere, 6 to 15 digits.
PHONE = s.string(
    pattern=r"^\+*( *[0-9]){6,15} *$",
    description="must be 6 to 15 digits in international format",
)


@operation(
    table.post,
    "/v1/tenants/{id}/pair",
    "Start pairing; then GET .../pairing",
    body=s.obj({"phone": s.nullable(PHONE)}),
    body_required=False,
    **TENANT_ACTION,
)
async def pair(request: web.Request, inp: Input) -> web.Response:
    phone = inp.body.get("phone")
    if phone is not None:
        phone = phone.lstrip("+").replace(" ", "")
        if not 6 <= len(phone) <= 15:
            raise ApiError(
                400, "invalid_field", "phone: must be 6 to 15 digits in international format"
            )
    return ok(await request.app[APP].supervisor.pair(inp.tenant, phone), 202)


def _wants_png(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "image/png" in accept and "application/json" not in accept


PAIRING = s.obj(
    {"qr": s.nullable(s.STR), "code": s.nullable(s.STR), "expires_ms": s.MS},
    ("qr", "code", "expires_ms"),
    closed=False,
)


@operation(
    table.get,
    "/v1/tenants/{id}/pairing",
    "The current QR payload or phone code",
    ok=(
        200,
        {
            "description": "JSON, or the QR as PNG with Accept: image/png",
            "content": {
                "application/json": {"schema": PAIRING},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    ),
    errors=(404,),
)
async def pairing(request: web.Request, inp: Input) -> web.StreamResponse:
    info = request.app[APP].supervisor.pairing(inp.tenant)
    if _wants_png(request):
        if not info["qr"]:
            raise ApiError(404, "no_qr", "no QR code to show: start pairing first")
        import segno

        buf = io.BytesIO()
        segno.make(info["qr"], error="l").save(buf, kind="png", scale=6, border=4)
        return web.Response(
            body=buf.getvalue(), content_type="image/png", headers={"Cache-Control": "no-store"}
        )
    return ok({"qr": info["qr"], "code": info["code"], "expires_ms": info["expires_ms"]})


@operation(table.post, "/v1/tenants/{id}/logout", "Unlink the device", **TENANT_ACTION)
async def logout(request: web.Request, inp: Input) -> web.Response:
    return ok(await request.app[APP].supervisor.logout(inp.tenant), 202)
