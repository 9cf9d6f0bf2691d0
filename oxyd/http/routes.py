"""HTTP API v1 handlers (design §6): probes, tenants and their tokens.

Thin: each route's Operation validates its input (operation.py), the handler calls the
supervisor or store and answers. Pairing is in routes_pairing.py, health and backups in
routes_operator.py, messages and chats in routes_data.py, the webhook in routes_webhook.py,
sending in sending.py, the simulator in simulate.py.
"""

from __future__ import annotations

import gzip
import json
import secrets
import time

from aiohttp import web

from oxyd.http import shapes as s
from oxyd.http.keys import APP, TOKEN_TENANT
from oxyd.http.operation import Input, operation
from oxyd.http.page import close_tenant_streams
from oxyd.http.replies import ApiError, ok
from oxyd.http.routes_webhook import set_webhook
from oxyd.http.settings import SETTINGS, settings_fields
from oxyd.model import ENGINES

table = web.RouteTableDef()

# The admin's tenant list is ~300 KB of JSON at 1,000 tenants (~6 ms to build and encode): under
# a polling dashboard or many clients, answers for this long reuse the same bytes. Any write
# through the API clears it (see middleware.invalidate_on_write), so an operator never sees a stale
# list after their own change; engine-driven changes show up within this time.
LIST_CACHE_S = 0.25


class ListCache:
    def __init__(self) -> None:
        self.body: bytes | None = None
        self.gzipped: bytes | None = None  # compressed once per build, on first demand
        self.built_mono = 0.0
        self.version = -1

    def invalidate(self) -> None:
        self.body = self.gzipped = None


LIST_CACHE: web.AppKey[ListCache] = web.AppKey("oxyd_list_cache", ListCache)


TENANT_OK = s.json_response(s.ref("Tenant"), "The tenant object")
READY = s.json_response(
    s.obj(
        {"status": s.string(enum=("ready", "not_ready")), "checks": {"type": "object"}},
        ("status", "checks"),
        closed=False,
    )
)
TENANT_ACTION = dict(ok=(202, TENANT_OK), errors=(409,))


# ---- probes ----


@operation(
    table.get,
    "/healthz",
    "Liveness",
    access="open",
    ok=(200, s.json_response(s.obj({"status": {"const": "ok"}}, ("status",)))),
)
async def healthz(request: web.Request, inp: Input) -> web.Response:
    return ok({"status": "ok"})


@operation(
    table.get,
    "/readyz",
    "Readiness",
    access="open",
    ok=(200, READY),
    responses={503: {**READY, "description": "Not ready"}},
)
async def readyz(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    checks = {
        "database": not app.store.closed and await app.store.ping(),
        "supervisor": app.supervisor.running and app.supervisor.broken is None,
        "writer": not app.writer.failing,
    }
    ready = all(checks.values())
    return ok(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )


# ---- tenants ----


@operation(
    table.get,
    "/v1/tenants",
    "List tenants (a tenant token sees its own)",
    ok=(
        200,
        s.json_response(s.obj({"tenants": s.array(s.ref("Tenant"))}, ("tenants",), closed=False)),
    ),
)
async def list_tenants(request: web.Request, inp: Input) -> web.Response:
    sup = request.app[APP].supervisor
    own = request.get(TOKEN_TENANT)
    if own is None:
        cache = request.app[LIST_CACHE]
        now = time.monotonic()
        # State changes bump sup.version and show at once; only counters (messages stored,
        # last event) may lag by up to LIST_CACHE_S.
        if (
            cache.body is None
            or cache.version != sup.version
            or now - cache.built_mono > LIST_CACHE_S
        ):
            cache.body = json.dumps({"tenants": sup.tenants()}).encode()
            cache.gzipped = None
            cache.built_mono, cache.version = now, sup.version
        if "gzip" in request.headers.get("Accept-Encoding", "") and len(cache.body) > 4096:
            # 1,000 tenants are ~260 KB of JSON; gzip makes it ~10x smaller, and sending the
            # bytes, not building them, is what costs at many requests per second.
            if cache.gzipped is None:
                cache.gzipped = gzip.compress(cache.body, compresslevel=1)
            return web.Response(
                body=cache.gzipped,
                content_type="application/json",
                headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
            )
        return web.Response(
            body=cache.body, content_type="application/json", headers={"Vary": "Accept-Encoding"}
        )
    runner = sup.runners.get(own)
    return ok({"tenants": [sup.tenant_json(runner)] if runner is not None else []})


ADD_TENANT = s.obj(
    {
        "id": s.string(
            pattern=s.TENANT_ID_PATTERN, description="must match " + s.TENANT_ID_PATTERN
        ),
        "engine": s.nullable(s.string(enum=ENGINES)),
        "webhook": s.nullable(s.WEBHOOK_IN),
        **SETTINGS,
    },
    ("id",),
)


@operation(
    table.post,
    "/v1/tenants",
    "Add a tenant",
    access="admin",
    ok=(201, TENANT_OK),
    errors=(409,),
    body=ADD_TENANT,
    field_codes={"id": "invalid_tenant_id"},
)
async def add_tenant(request: web.Request, inp: Input) -> web.Response:
    tid, body = inp.body["id"], inp.body
    engine = body.get("engine") or "neonize"
    app = request.app[APP]
    if engine not in app.engines:
        raise ApiError(400, "engine_unavailable", f"engine: {engine} is not available here")
    settings = settings_fields(body, request)  # the proxy: admin only, and a valid URL
    hook = body.get("webhook")
    if hook is not None:
        hook = {**hook, "events": sorted(set(hook["events"])) if hook.get("events") else None}
    data = await app.supervisor.add(tid, engine, settings)
    if hook is not None:
        await set_webhook(request, tid, hook)
    return ok(data, 201)


@operation(table.get, "/v1/tenants/{id}", "Get a tenant", ok=(200, TENANT_OK))
async def get_tenant(request: web.Request, inp: Input) -> web.Response:
    sup = request.app[APP].supervisor
    return ok(sup.tenant_json(sup.runner(inp.tenant)))


@operation(
    table.delete,
    "/v1/tenants/{id}",
    "Remove a tenant: log out, delete its device store",
    access="admin",
    errors=(409,),
    query={"purge": {**s.BOOL, "default": False, "description": "also delete its messages"}},
    ok=(
        200,
        s.json_response(
            s.obj(
                {"id": s.STR, "removed": s.BOOL, "purged": s.BOOL},
                ("id", "removed", "purged"),
                closed=False,
            )
        ),
    ),
)
async def remove_tenant(request: web.Request, inp: Input) -> web.Response:
    purge = inp.query["purge"]
    await request.app[APP].supervisor.remove(inp.tenant, purge=purge)
    close_tenant_streams(request.app, inp.tenant)  # its tokens died with it
    return ok({"id": inp.tenant, "removed": True, "purged": purge})


@operation(table.post, "/v1/tenants/{id}/start", "Start the tenant", **TENANT_ACTION)
async def start_tenant(request: web.Request, inp: Input) -> web.Response:
    return ok(await request.app[APP].supervisor.start_tenant(inp.tenant), 202)


@operation(table.post, "/v1/tenants/{id}/stop", "Stop the tenant", **TENANT_ACTION)
async def stop_tenant(request: web.Request, inp: Input) -> web.Response:
    return ok(await request.app[APP].supervisor.stop_tenant(inp.tenant), 202)


# Rate limited per tenant (429 with Retry-After): each restart dials WhatsApp again.
@operation(
    table.post,
    "/v1/tenants/{id}/restart",
    "Restart the tenant",
    ok=(202, TENANT_OK),
    errors=(409, 429),
)
async def restart_tenant(request: web.Request, inp: Input) -> web.Response:
    return ok(await request.app[APP].supervisor.restart_tenant(inp.tenant, limited=True), 202)


# ---- tokens ----


@operation(
    table.post,
    "/v1/tenants/{id}/tokens",
    "Create a tenant token (shown once)",
    access="admin",
    ok=(
        201,
        s.json_response(
            s.obj({"token": s.STR, "tenant": s.STR}, ("token", "tenant"), closed=False)
        ),
    ),
)
async def create_token(request: web.Request, inp: Input) -> web.Response:
    # 256 random bits; the prefix makes leaked tokens easy to grep for in logs and repos.
    token = "oxt_" + secrets.token_urlsafe(32)
    app = request.app[APP]
    await app.store.add_token(inp.tenant, token, app.clock.now_ms())
    return ok({"token": token, "tenant": inp.tenant}, 201)


@operation(
    table.delete,
    "/v1/tenants/{id}/tokens",
    "Revoke all of the tenant's tokens",
    access="admin",
    ok=(200, s.json_response(s.obj({"revoked": s.INT}, ("revoked",), closed=False))),
)
async def revoke_tokens(request: web.Request, inp: Input) -> web.Response:
    revoked = await request.app[APP].store.revoke_tokens(inp.tenant)
    close_tenant_streams(request.app, inp.tenant)  # revocation is immediate, open streams included
    return ok({"revoked": revoked})
