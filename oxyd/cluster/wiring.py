"""Cluster mode wired into an app (`ClusterConfig.enabled`): the node, its middleware and
routes, its start/stop hooks, and the recovery of moves a crash interrupted. The daemon
calls `attach` between app.build() and app.start(); the app itself knows nothing of it."""

from __future__ import annotations

import asyncio
import shutil

from loguru import logger

from oxyd import datadir, log
from oxyd.app import App
from oxyd.cluster import handover, mover, proxy, ring, routes
from oxyd.cluster.node import Node
from oxyd.cluster.peers import Peers
from oxyd.model import valid_tenant_id
from oxyd.store import moves


async def attach(app: App) -> Node:
    """Called by the daemon in cluster mode, after app.build() and before any tenant
    starts: it decides which ones may."""
    cfg = app.cfg.cluster
    me = ring.node_ordinal(cfg.node)
    token = (await asyncio.to_thread(cfg.token_file.read_text)).strip()
    if len(token) < 16:
        raise ValueError(f"cluster.token_file: {cfg.token_file} holds fewer than 16 characters")
    log.redact(token)
    peers = Peers(cfg.peer_url, me, cfg.nodes, token, cfg.peer_timeout_s)
    node = Node(app, me, cfg.nodes, peers)
    app.extras["cluster"] = node
    await _recover(node)
    outgoing = await moves.all_moves(app.store, moves.OUT)
    node.moving.update(outgoing)
    # A tenant whose move began before a restart stays stopped until its new owner says
    # whether it has it: running it here could make two copies run.
    app.supervisor.skip = outgoing.__contains__
    app.supervisor.extra_fields["node"] = me
    app.extras.setdefault("middlewares", []).append(proxy.middleware(node))
    app.extras.setdefault("route_tables", []).append(routes.table)
    node.mover = mover.Mover(node)
    app.extras.setdefault("on_start", []).append(node.mover.start)
    app.extras.setdefault("on_stop", []).append(_closer(node))
    role = "owns a share" if me < cfg.nodes else "owns nothing (leaving: hands every tenant off)"
    logger.info("cluster node {} of {}: {}", me, cfg.nodes, role)
    if outgoing:
        logger.info("{} tenant moves to resume: {}", len(outgoing), sorted(outgoing))
    return node


def _closer(node: Node):
    async def close() -> None:
        await node.mover.stop()
        await node.peers.close()

    return close


async def _recover(node: Node) -> None:
    """After a crash: finish imports whose rows committed, drop half-made archives."""
    app = node.app
    incoming = handover.work_dir(app, "in")
    stages = await asyncio.to_thread(_dirs, incoming)
    for tid in stages:
        stage = incoming / tid
        folder = datadir.tenant_dir(app.cfg.data_dir, tid)
        has_row = await app.store.tenant(tid) is not None
        files = stage / "files"
        if has_row and not folder.exists() and files.is_dir():
            await asyncio.to_thread(handover.place_files, stage, folder)
            logger.bind(tenant=tid).info("finished an import interrupted after its commit")
        await asyncio.to_thread(shutil.rmtree, stage, True)
    await asyncio.to_thread(shutil.rmtree, handover.work_dir(app, "out"), True)


def _dirs(path) -> list[str]:
    if not path.is_dir():
        return []
    return [p.name for p in path.iterdir() if p.is_dir() and valid_tenant_id(p.name)]
