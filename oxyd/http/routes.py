"""HTTP API v1 handlers (design §6): probes, tenants, pairing, tokens, health, simulation.

Thin: validate, call the supervisor or store, answer. Messages and chats are in
routes_data.py, the webhook in routes_webhook.py.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import re
import secrets
import time

from aiohttp import web

from oxyd.engine import EngineError, NotConnected
from oxyd.http.access import require_admin, tenant_id
from oxyd.http.inputs import (
    body_limit_bytes,
    bool_param,
    check_fields,
    json_body,
    no_body,
    parse_json_object,
    read_limited,
)
from oxyd.http.keys import APP, TOKEN_TENANT
from oxyd.http.replies import ApiError, ok
from oxyd.http.routes_webhook import set_webhook, webhook_fields
from oxyd.model import ENGINES, valid_tenant_id

table = web.RouteTableDef()

PHONE_RE = re.compile(r"[0-9]{6,15}")
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


# ---- probes ----


@table.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return ok({"status": "ok"})


@table.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
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


@table.get("/v1/tenants")
async def list_tenants(request: web.Request) -> web.Response:
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


@table.post("/v1/tenants")
async def add_tenant(request: web.Request) -> web.Response:
    require_admin(request)
    raw = await read_limited(request, body_limit_bytes(request))
    body = parse_json_object(raw, required=True)
    tid = body.get("id")
    # The id gets its own code whatever is wrong with it: clients branch on invalid_tenant_id.
    if "id" in body and not valid_tenant_id(tid):
        raise ApiError(400, "invalid_tenant_id", "id: must match ^[a-z0-9][a-z0-9_-]{0,62}$")
    from oxyd.http.settings import FIELDS, settings_fields

    check_fields(body, {"id": str, "engine": str, "webhook": dict, **FIELDS}, required=("id",))
    settings = settings_fields(body, request)
    engine = body.get("engine") or "neonize"
    if engine not in ENGINES:
        raise ApiError(400, "invalid_field", f"engine: must be one of {list(ENGINES)}")
    app = request.app[APP]
    if engine not in app.engines:
        raise ApiError(400, "engine_unavailable", f"engine: {engine} is not available here")
    hook = webhook_fields(body["webhook"], "webhook.") if body.get("webhook") is not None else None
    data = await app.supervisor.add(tid, engine, settings)
    if hook is not None:
        await set_webhook(request, tid, hook)
    return ok(data, 201)


@table.get("/v1/tenants/{id}")
async def get_tenant(request: web.Request) -> web.Response:
    sup = request.app[APP].supervisor
    return ok(sup.tenant_json(sup.runner(tenant_id(request))))


@table.delete("/v1/tenants/{id}")
async def remove_tenant(request: web.Request) -> web.Response:
    require_admin(request)
    tid = tenant_id(request)
    purge = bool_param(request, "purge")
    await request.app[APP].supervisor.remove(tid, purge=purge)
    from oxyd.http.page import close_tenant_streams

    close_tenant_streams(request.app, tid)  # its tokens died with it
    return ok({"id": tid, "removed": True, "purged": purge})


@table.post("/v1/tenants/{id}/start")
async def start_tenant(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    await no_body(request)
    return ok(await request.app[APP].supervisor.start_tenant(tid), 202)


@table.post("/v1/tenants/{id}/stop")
async def stop_tenant(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    await no_body(request)
    return ok(await request.app[APP].supervisor.stop_tenant(tid), 202)


@table.post("/v1/tenants/{id}/restart")
async def restart_tenant(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    await no_body(request)
    return ok(await request.app[APP].supervisor.restart_tenant(tid, limited=True), 202)


# ---- pairing ----


@table.post("/v1/tenants/{id}/pair")
async def pair(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    body = await json_body(request, allowed={"phone": str})
    phone = body.get("phone")
    if phone is not None:
        phone = phone.lstrip("+").replace(" ", "")
        if not PHONE_RE.fullmatch(phone):
            raise ApiError(
                400, "invalid_field", "phone: must be 6 to 15 digits in international format"
            )
    return ok(await request.app[APP].supervisor.pair(tid, phone), 202)


def _wants_png(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "image/png" in accept and "application/json" not in accept


@table.get("/v1/tenants/{id}/pairing")
async def pairing(request: web.Request) -> web.StreamResponse:
    tid = tenant_id(request)
    info = request.app[APP].supervisor.pairing(tid)
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


@table.post("/v1/tenants/{id}/logout")
async def logout(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    await no_body(request)
    return ok(await request.app[APP].supervisor.logout(tid), 202)


# ---- tokens ----


@table.post("/v1/tenants/{id}/tokens")
async def create_token(request: web.Request) -> web.Response:
    require_admin(request)
    tid = tenant_id(request)
    await no_body(request)
    # 256 random bits; the prefix makes leaked tokens easy to grep for in logs and repos.
    token = "oxt_" + secrets.token_urlsafe(32)
    app = request.app[APP]
    await app.store.add_token(tid, token, app.clock.now_ms())
    return ok({"token": token, "tenant": tid}, 201)


@table.delete("/v1/tenants/{id}/tokens")
async def revoke_tokens(request: web.Request) -> web.Response:
    require_admin(request)
    tid = tenant_id(request)
    revoked = await request.app[APP].store.revoke_tokens(tid)
    from oxyd.http.page import close_tenant_streams

    close_tenant_streams(request.app, tid)  # revocation is immediate, open streams included
    return ok({"revoked": revoked})


# ---- health and simulation ----


@table.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    require_admin(request)
    app = request.app[APP]
    jobs = app.extras.get("jobs")
    if jobs is not None and jobs.last_health is not None:
        return ok(jobs.last_health)  # the sweep plus never-paired tenants past retention
    # Before the first scheduled sweep, run one so the answer is never empty.
    return ok(app.supervisor.last_health or await app.supervisor.health_sweep())


@table.post("/v1/backups")
async def make_backup(request: web.Request) -> web.Response:
    require_admin(request)
    app = request.app[APP]
    await read_limited(request, body_limit_bytes(request))
    jobs = app.extras.get("jobs")
    if jobs is None or jobs._make_backup is None:
        raise ApiError(
            409, "backups_not_configured", "no backup key: set OXYD_BACKUP_KEY or backup.key_file"
        )
    from oxyd import backup

    path = await jobs.backup_now()
    listing = await asyncio.to_thread(backup.list_backups, app.cfg.data_dir)
    entry = next((b for b in listing if b["name"] == path.name), {"name": path.name})
    return ok({k: (str(v) if k == "path" else v) for k, v in entry.items()}, 201)


@table.get("/v1/backups")
async def list_backups(request: web.Request) -> web.Response:
    require_admin(request)
    from oxyd import backup

    app = request.app[APP]
    listing = await asyncio.to_thread(backup.list_backups, app.cfg.data_dir)
    return ok(
        {"backups": [{k: (str(v) if k == "path" else v) for k, v in b.items()} for b in listing]}
    )


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
