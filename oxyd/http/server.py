"""The control port: aiohttp app factory, auth and error middlewares, and the server leaf.

Handlers live in routes*.py; they read the App through `request.app[APP]` and hold no state.
Every answer that is not a success uses one format, `{"error": {"code", "message"}}`, including
aiohttp's own 404/405/413: the errors middleware turns every exception into it, so no input
makes the server answer with a stack trace or an HTML page.
"""

from __future__ import annotations

import hmac
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import SystemRoute
from loguru import logger

from oxyd.app import App
from oxyd.engine import EngineError
from oxyd.model import valid_tenant_id
from oxyd.supervisor import TenantError

APP: web.AppKey[App] = web.AppKey("oxyd_app", App)
# Open to anyone: probes for load balancers and systemd, and the API description (it holds no
# data, and tools such as schemathesis or Swagger UI read it before they have a token).
# The status page itself holds no data: it asks for a token and sends it on every call.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/v1/openapi.json"})
# Set by the auth middleware: None for the admin, else the tenant id the token belongs to.
TOKEN_TENANT: web.RequestKey[str | None] = web.RequestKey("oxyd_token_tenant", str)
# Tokens are url-safe base64; anything longer or odder is refused before hashing or a query.
MAX_TOKEN_CHARS = 512

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _http_exception_message(request: web.Request, e: web.HTTPException) -> str:
    if e.status == 404:
        return f"no route {request.method} {request.path}"
    if e.status == 405:
        allowed = e.headers.get("Allow", "")
        return f"{request.method} is not allowed here; allowed: {allowed}"
    return e.reason or _STATUS_CODES.get(e.status, "http error")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except TenantError as e:
        headers = None
        retry_after_s = getattr(e, "retry_after_s", None)
        if e.status == 429:
            # Whole seconds, rounded up: a client that waits exactly this long gets a token.
            headers = {"Retry-After": str(max(1, int((retry_after_s or 1) + 0.999)))}
        return error_response(e.status, e.code, e.message, headers)
    except EngineError as e:
        # The engine refused (e.g. a device store that cannot be read): the tenant's trouble,
        # not a server bug.
        return error_response(409, "engine_error", str(e) or "the engine refused")
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "body_too_large", "the request body is too large")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _STATUS_CODES.get(e.status, "http_error")
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return error_response(e.status, code, _http_exception_message(request, e), headers)
    except Exception as e:
        logger.opt(exception=e).error("unhandled error on {} {}", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the daemon's log")


def _unauthorized(message: str, invalid: bool) -> ApiError:
    challenge = 'Bearer realm="oxyd"' + (', error="invalid_token"' if invalid else "")
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": challenge})


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Unknown routes and wrong methods answer 404/405 before auth: the route list is public
    # (openapi.json), and a client debugging a typo deserves the real reason.
    if isinstance(request.match_info.route, SystemRoute):
        return await handler(request)
    if request.path in OPEN_PATHS or request.method == "OPTIONS":
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'", False)
    # Non-ASCII tokens cannot be ours, and would not survive .encode() below.
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise _unauthorized("invalid token", True)
    app = request.app[APP]
    if hmac.compare_digest(token.encode(), app.admin_token.encode()):
        request[TOKEN_TENANT] = None
        return await handler(request)
    tenant = await app.store.token_tenant(token)  # compared by its SHA-256, never in clear
    if tenant is None:
        raise _unauthorized("invalid token", True)
    request[TOKEN_TENANT] = tenant
    return await handler(request)


def require_admin(request: web.Request) -> None:
    if request.get(TOKEN_TENANT) is not None:
        raise ApiError(403, "forbidden", "this route needs the admin token")


def tenant_id(request: web.Request) -> str:
    """The {id} path segment, validated, and visible to this token (else 404)."""
    tid = request.match_info["id"]
    if not valid_tenant_id(tid):
        raise ApiError(400, "invalid_tenant_id", "tenant ids match ^[a-z0-9][a-z0-9_-]{0,62}$")
    own = request.get(TOKEN_TENANT)
    # Another tenant's id answers exactly like a missing one: a token learns nothing of others.
    if (own is not None and own != tid) or tid not in request.app[APP].supervisor.runners:
        raise ApiError(404, "tenant_not_found", f"no tenant {tid!r}")
    return tid


def body_limit_bytes(request: web.Request) -> int:
    return request.app[APP].cfg.http.max_body_bytes


async def read_limited(request: web.Request, limit_bytes: int) -> bytes:
    """The body, refused with 413 past `limit_bytes` without reading it all."""
    too_large = ApiError(413, "body_too_large", f"the body exceeds {limit_bytes} bytes")
    if request.content_length is not None and request.content_length > limit_bytes:
        raise too_large
    # read(n) returns whatever has arrived (up to n), not n bytes: loop until EOF.
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(limit_bytes + 1 - total):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit_bytes:
            raise too_large
    return b"".join(chunks)


def parse_json_object(raw: bytes, *, required: bool) -> dict[str, Any]:
    """An empty body is {} unless a body is required; anything but an object is 400."""
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_body", "a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return body


def check_fields(
    body: dict[str, Any],
    allowed: dict[str, type | tuple],
    required: tuple[str, ...] = (),
    prefix: str = "",
) -> dict[str, Any]:
    """Field-by-field type check; every error names the field (with `prefix` when nested)."""
    for key, value in body.items():
        if key not in allowed:
            raise ApiError(400, "unknown_field", f"{prefix}{key}: unknown field")
        tp = allowed[key]
        if value is None and key not in required:
            continue
        # bool is an int subclass in Python but not in JSON: refuse true where a number goes.
        bad = not isinstance(value, tp) or (isinstance(value, bool) and bool not in _tuple(tp))
        if bad:
            raise ApiError(400, "invalid_field", f"{prefix}{key}: must be {_type_name(tp)}")
    for key in required:
        if body.get(key) is None:
            raise ApiError(400, "missing_field", f"{prefix}{key}: is required")
    return body


async def json_body(
    request: web.Request,
    *,
    allowed: dict[str, type | tuple],
    required: tuple[str, ...] = (),
    optional_body: bool = False,
    limit_bytes: int | None = None,
) -> dict[str, Any]:
    """Parse and check a JSON object body field by field; errors name the field."""
    raw = await read_limited(request, limit_bytes or body_limit_bytes(request))
    body = parse_json_object(raw, required=bool(required) and not optional_body)
    return check_fields(body, allowed, required)


def _tuple(tp: type | tuple) -> tuple:
    return tp if isinstance(tp, tuple) else (tp,)


def _type_name(tp: type | tuple) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        dict: "an object",
        list: "an array",
    }
    return " or ".join(names.get(t, t.__name__) for t in _tuple(tp))


def route_label(request: web.Request) -> str:
    """The route's template ("/v1/tenants/{id}"), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(observe: Callable[[str, str, int, float], None]):
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:  # redirects re-raised by `errors`
            status = e.status
            raise
        finally:
            observe(route_label(request), request.method, status, time.perf_counter() - started)

    return count


def invalidate_on_write(cache: Any):
    @web.middleware
    async def invalidate(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                cache.invalidate()

    return invalidate


def make_app(app: App) -> web.Application:
    from oxyd.http import metrics, openapi, people, routes, routes_data, settings

    registry = metrics.Metrics(app)
    list_cache = routes.ListCache()
    # Bodies are read through read_limited (per-route limits: media sends may be larger).
    media_limit = app.cfg.send.max_media_bytes * 4 // 3 + 64 * 1024
    web_app = web.Application(
        middlewares=[
            metrics_middleware(registry.observe_request),
            invalidate_on_write(list_cache),
            errors,
            # Cluster mode routes a tenant's requests to its node before any token check.
            *app.extras.get("middlewares", ()),
            auth,
        ],
        client_max_size=max(app.cfg.http.max_body_bytes, media_limit),
    )
    web_app[APP] = app
    web_app[metrics.METRICS] = registry
    web_app[routes.LIST_CACHE] = list_cache
    web_app.add_routes(routes.table)
    from oxyd.http import page  # page.py imports APP from here

    page.setup(web_app)  # GET /, GET /v1/events, and ends event streams at shutdown
    web_app.add_routes(routes_data.table)
    from oxyd.http import media

    web_app.add_routes(media.table)
    web_app.add_routes(settings.table)
    people.setup(web_app)
    web_app.add_routes(metrics.table)
    web_app.add_routes(openapi.table)
    from oxyd.http import routes_archive

    web_app.add_routes(routes_archive.table)
    for extra in app.extras.get("route_tables", ()):
        web_app.add_routes(extra)
    return web_app


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host`, taken before any tenant starts: a port
    in use must stop the daemon at once, not after it connected every session. Connections
    that arrive before serve() wait in the backlog instead of being refused."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(512)
            s.setblocking(False)
    except OSError as e:
        for s in socks:
            s.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return socks


async def serve(app: App, socks: list[socket.socket] | None = None) -> web.AppRunner:
    runner = web.AppRunner(make_app(app), access_log=None, handle_signals=False)
    await runner.setup()
    if socks is None:
        socks = bind(app.cfg.http.host, app.cfg.http.port)
    for sock in socks:
        await web.SockSite(runner, sock).start()
    return runner
