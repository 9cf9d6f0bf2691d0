"""Node-to-node routes under /v1/cluster/ (cluster token, not a user token): where is a
tenant, and receive a tenant's archive. Served only in cluster mode; internal, so not in the
public OpenAPI document (docs/cluster.md lists them)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from aiohttp import web
from loguru import logger

from oxyd.cluster import archive, handover
from oxyd.cluster.node import node_of
from oxyd.cluster.peers import FROM_HEADER, TOKEN_HEADER
from oxyd.http.keys import APP
from oxyd.http.replies import ApiError
from oxyd.http.routes_archive import save_body
from oxyd.model import valid_tenant_id
from oxyd.store import moves, tenant_rows

table = web.RouteTableDef()
SHA_HEADER = "X-Oxyd-Archive-Sha256"


def _peer(request: web.Request) -> int:
    """The calling node's ordinal, after checking the cluster token."""
    node = node_of(request.app[APP])
    if not node.peers.token_ok(request.headers.get(TOKEN_HEADER)):
        raise ApiError(401, "unauthorized", "node-to-node routes need the cluster token")
    raw = request.headers.get(FROM_HEADER, "")
    return int(raw) if raw.isdigit() else -1


def _tid(request: web.Request) -> str:
    tid = request.match_info["id"]
    if not valid_tenant_id(tid):
        raise ApiError(400, "invalid_tenant_id", "tenant ids match ^[a-z0-9][a-z0-9_-]{0,62}$")
    return tid


@table.get("/v1/cluster/tenants/{id}")
async def where(request: web.Request) -> web.Response:
    _peer(request)
    app = request.app[APP]
    node = node_of(app)
    tid = _tid(request)
    out = node.where(tid)
    received = await moves.get(app.store, tid, moves.IN)
    out["received"] = received
    return web.json_response(out)


@table.put("/v1/cluster/tenants/{id}/archive")
async def receive(request: web.Request) -> web.Response:
    """A peer hands over a tenant: the body is its archive, X-Oxyd-Archive-Sha256 its hash.
    201 when imported and started here; 200 when it already was (a retry after a lost
    answer); 409 when this node is not the owner or has another copy."""
    source = _peer(request)
    app = request.app[APP]
    node = node_of(app)
    tid = _tid(request)
    sha = request.headers.get(SHA_HEADER, "")
    if node.owner(tid) != node.me:
        raise ApiError(
            409, "not_owner", f"node {node.me} does not own {tid!r}; check cluster.nodes"
        )
    if node.holds(tid):
        received = await moves.get(app.store, tid, moves.IN)
        if received and received["sha256"] == sha and received["peer"] == source:
            return web.json_response({"tenant": tid, "node": node.me, "imported": False})
        raise ApiError(409, "tenant_exists", f"tenant {tid!r} exists on node {node.me}")
    if tid in node.importing:
        raise ApiError(409, "tenant_moving", f"tenant {tid!r} is being imported already")
    node.importing.add(tid)
    logger.bind(tenant=tid).info("receiving the tenant from node {}", source)
    path = handover.work_dir(app, "in", f"{tid}.tar")
    try:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
        got = await save_body(request, path)
        if got != sha:
            raise ApiError(400, "invalid_archive", "the archive's sha256 does not match")
        record = (
            moves.UPSERT_SQL,
            moves.upsert_args(tid, moves.IN, source, sha, "imported", app.clock.now_ms()),
        )
        data = await handover.import_archive(app, tid, path, [record])
    except archive.ArchiveError as e:
        raise ApiError(400, e.code, e.message) from None
    except tenant_rows.ImportRefused as e:
        raise ApiError(409, e.code, e.message) from None
    finally:
        node.importing.discard(tid)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)
    logger.bind(tenant=tid).info("tenant received from node {} and started", source)
    return web.json_response({"tenant": tid, "node": node.me, "imported": True, **data}, status=201)
