"""HTTP API v1 handlers (design §6): probes, tenants, pairing, tokens, health, simulation.

Thin: each route's Operation validates its input (operation.py), the handler calls the
supervisor or store and answers. Messages and chats are in
routes_data.py, the webhook in routes_webhook.py.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import secrets
import time

from aiohttp import web

from oxyd import backup
from oxyd.engine import EngineError, NotConnected
from oxyd.http import shapes as s
from oxyd.http.access import tenant_id
from oxyd.http.inputs import body_limit_bytes, parse_json_object, read_limited
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
# What pair() accepts: leading +, spaces anywhere, 6 to 15 digits.
PHONE = s.string(
    pattern=r"^\+*( *[0-9]){6,15} *$",
    description="must be 6 to 15 digits in international format",
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


# ---- pairing ----


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


# ---- health and backups ----

HEALTH = s.obj(
    {
        "checked_at_ms": s.INT,
        "total": s.INT,
        "healthy": s.INT,
        "reconnected": s.INT,
        "failed": s.INT,
        "alerts": s.array({"type": "object"}),
    },
    ("checked_at_ms", "total", "healthy", "reconnected", "failed", "alerts"),
    closed=False,
)


@operation(
    table.get,
    "/v1/health",
    "The last health sweep",
    access="admin",
    ok=(200, s.json_response(HEALTH)),
)
async def health(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    jobs = app.extras.get("jobs")
    if jobs is not None and jobs.last_health is not None:
        return ok(jobs.last_health)  # the sweep plus never-paired tenants past retention
    # Before the first scheduled sweep, run one so the answer is never empty.
    return ok(app.supervisor.last_health or await app.supervisor.health_sweep())


BACKUP = s.obj(
    {"name": s.STR, "path": s.STR, "size_bytes": s.INT, "created_at_ms": s.INT},
    ("name",),
    closed=False,
)


@operation(
    table.post,
    "/v1/backups",
    "Take an encrypted backup now (needs OXYD_BACKUP_KEY or backup.key_file)",
    access="admin",
    ok=(201, s.json_response(BACKUP)),
    errors=(409,),
)
async def make_backup(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    jobs = app.extras.get("jobs")
    if jobs is None or jobs._make_backup is None:
        raise ApiError(
            409, "backups_not_configured", "no backup key: set OXYD_BACKUP_KEY or backup.key_file"
        )
    path = await jobs.backup_now()
    listing = await asyncio.to_thread(backup.list_backups, app.cfg.data_dir)
    entry = next((b for b in listing if b["name"] == path.name), {"name": path.name})
    return ok({k: (str(v) if k == "path" else v) for k, v in entry.items()}, 201)


@operation(
    table.get,
    "/v1/backups",
    "Encrypted backups in the data directory, newest first",
    access="admin",
    ok=(200, s.json_response(s.obj({"backups": s.array(BACKUP)}, ("backups",), closed=False))),
)
async def list_backups(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    listing = await asyncio.to_thread(backup.list_backups, app.cfg.data_dir)
    return ok(
        {"backups": [{k: (str(v) if k == "path" else v) for k, v in b.items()} for b in listing]}
    )


# Converted to an Operation once every simulator action of this wave has landed (its
# variants are a tagged union: an action without a variant would be refused).
@table.post("/v1/tenants/{id}/simulate")
async def simulate(request: web.Request) -> web.Response:
    from oxyd.simulator.engine import SimulationError

    tid = tenant_id(request)
    app = request.app[APP]
    raw = await read_limited(request, body_limit_bytes(request))
    body = parse_json_object(raw, required=True)
    try:
        result = await app.supervisor.simulate(tid, body)
    except SimulationError as e:
        raise ApiError(400, "invalid_action", str(e)) from None
    except NotConnected as e:
        raise ApiError(409, "not_connected", str(e) or "tenant is not connected") from None
    except EngineError as e:
        raise ApiError(409, "engine_error", str(e)) from None
    return ok({"ok": True, **result}, 202)
