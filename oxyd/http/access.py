"""Who may call what: the bearer-token middleware and the checks handlers make.

The admin token is compared in constant time; tenant tokens are looked up by their SHA-256, so
a token is never held or compared in clear. A tenant token sees its own tenant only, and
another tenant's id answers exactly like a missing one.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.web_urldispatcher import SystemRoute

from oxyd.http.keys import APP, TOKEN_TENANT
from oxyd.http.middleware import Handler
from oxyd.http.replies import ApiError
from oxyd.model import valid_tenant_id

# Open to anyone: probes for load balancers and systemd, and the API description (it holds no
# data, and tools such as schemathesis or Swagger UI read it before they have a token).
# The status page itself holds no data: it asks for a token and sends it on every call.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/v1/openapi.json"})
# Tokens are url-safe base64; anything longer or odder is refused before hashing or a query.
MAX_TOKEN_CHARS = 512


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


def tenant_id(request: web.Request, *, exists: bool = True) -> str:
    """The {id} path segment, validated, and (unless `exists` is False: a route that makes the
    tenant) a tenant visible to this token, else 404."""
    tid = request.match_info["id"]
    if not valid_tenant_id(tid):
        raise ApiError(400, "invalid_tenant_id", "tenant ids match ^[a-z0-9][a-z0-9_-]{0,62}$")
    if not exists:
        return tid
    own = request.get(TOKEN_TENANT)
    # Another tenant's id answers exactly like a missing one: a token learns nothing of others.
    if (own is not None and own != tid) or tid not in request.app[APP].supervisor.runners:
        raise ApiError(404, "tenant_not_found", f"no tenant {tid!r}")
    return tid
