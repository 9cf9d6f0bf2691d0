"""The control port: aiohttp app factory, auth and error middlewares, and the server leaf.

Handlers live in routes.py; they read the App through `request.app[APP]` and hold no state.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from loguru import logger

from oxyd.app import App
from oxyd.model import valid_tenant_id
from oxyd.supervisor import TenantError

APP: web.AppKey[App] = web.AppKey("oxyd_app", App)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Set by the auth middleware: None for the admin, else the tenant id the token belongs to.
TOKEN_TENANT = "oxyd_token_tenant"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "body_too_large", 415: "unsupported_media_type", 429: "rate_limited",
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except TenantError as e:
        headers = None
        if e.status == 429:
            headers = {"Retry-After": str(max(1, int(getattr(e, "retry_after_s", 1) + 0.999)))}
        return error_response(e.status, e.code, e.message, headers)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "body_too_large", "the request body is too large")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _STATUS_CODES.get(e.status, "http_error")
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return error_response(e.status, code, e.reason or code, headers)
    except Exception as e:
        logger.opt(exception=e).error("unhandled error on {} {}", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the daemon's log")


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS or request.method == "OPTIONS" or request.path == "/":
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing bearer token",
                       {"WWW-Authenticate": 'Bearer realm="oxyd"'})
    app = request.app[APP]
    if hmac.compare_digest(token.encode(), app.admin_token.encode()):
        request[TOKEN_TENANT] = None
        return await handler(request)
    tenant = await app.store.token_tenant(token)
    if tenant is None:
        raise ApiError(401, "unauthorized", "invalid token",
                       {"WWW-Authenticate": 'Bearer realm="oxyd", error="invalid_token"'})
    request[TOKEN_TENANT] = tenant
    return await handler(request)


def require_admin(request: web.Request) -> None:
    if request.get(TOKEN_TENANT) is not None:
        raise ApiError(403, "forbidden", "this route needs the admin token")


def tenant_id(request: web.Request) -> str:
    """The {id} path segment, validated, and visible to this token (else 404)."""
    tid = request.match_info["id"]
    if not valid_tenant_id(tid):
        raise ApiError(400, "invalid_tenant_id",
                       "tenant ids match ^[a-z0-9][a-z0-9_-]{0,62}$")
    own = request.get(TOKEN_TENANT)
    if own is not None and own != tid:
        raise ApiError(404, "tenant_not_found", f"no tenant {tid!r}")
    if tid not in request.app[APP].supervisor.runners:
        raise ApiError(404, "tenant_not_found", f"no tenant {tid!r}")
    return tid


async def read_limited(request: web.Request, limit_bytes: int) -> bytes:
    """The body, refused with 413 past `limit_bytes` without reading it all."""
    if request.content_length is not None and request.content_length > limit_bytes:
        raise ApiError(413, "body_too_large", f"the body exceeds {limit_bytes} bytes")
    raw = await request.content.read(limit_bytes + 1)
    if len(raw) > limit_bytes:
        raise ApiError(413, "body_too_large", f"the body exceeds {limit_bytes} bytes")
    return raw


async def json_body(request: web.Request, *, allowed: dict[str, type | tuple],
                    required: tuple[str, ...] = (), optional_body: bool = False,
                    limit_bytes: int | None = None) -> dict[str, Any]:
    """Parse and check a JSON object body field by field; errors name the field."""
    raw = await read_limited(request, limit_bytes or request.app[APP].cfg.http.max_body_bytes)
    if not raw.strip():
        if optional_body or not required:
            return {}
        raise ApiError(400, "invalid_body", "a JSON object body is required")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    for key, value in body.items():
        if key not in allowed:
            raise ApiError(400, "unknown_field", f"{key}: unknown field")
        tp = allowed[key]
        if value is None and key not in required:
            continue
        bad = not isinstance(value, tp) or (isinstance(value, bool) and bool not in _tuple(tp))
        if bad:
            raise ApiError(400, "invalid_field", f"{key}: must be {_type_name(tp)}")
    for key in required:
        if body.get(key) is None:
            raise ApiError(400, "missing_field", f"{key}: is required")
    return body


def _tuple(tp: type | tuple) -> tuple:
    return tp if isinstance(tp, tuple) else (tp,)


def _type_name(tp: type | tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             dict: "an object", list: "an array"}
    return " or ".join(names.get(t, t.__name__) for t in _tuple(tp))


def make_app(app: App) -> web.Application:
    from oxyd import routes

    # Bodies are read through read_limited (per-route limits: media sends may be larger).
    media_limit = app.cfg.send.max_media_bytes * 4 // 3 + 64 * 1024
    web_app = web.Application(middlewares=[errors, auth],
                              client_max_size=max(app.cfg.http.max_body_bytes, media_limit))
    web_app[APP] = app
    web_app.add_routes(routes.table)
    for extra in app.extras.get("route_tables", ()):
        web_app.add_routes(extra)
    return web_app


async def serve(app: App) -> web.AppRunner:
    runner = web.AppRunner(make_app(app), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, app.cfg.http.host, app.cfg.http.port, reuse_address=True)
    await site.start()
    return runner
