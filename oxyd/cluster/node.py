"""This node in the cluster: who it is, its peers, which tenants are in flight, and the
wiring into the app (middleware, routes, start/stop hooks). `attach` is the only entry point
the app calls, and only in cluster mode (`ClusterConfig.enabled`)."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from oxyd import datadir
from oxyd.app import App
from oxyd.cluster import handover, ring
from oxyd.cluster.peers import Peers, PeerUnavailable
from oxyd.store import moves

RETRY_AFTER_S = 5


@dataclass
class Node:
    app: App
    me: int
    nodes: int
    peers: Peers
    # Tenants stopped here and on their way to another node (or waiting to learn whether the
    # peer has them): requests for them answer 503 tenant_moving, never a second copy.
    moving: set[str] = field(default_factory=set)
    importing: set[str] = field(default_factory=set)
    # Engine clients of tenants moved away, kept for the life of the process: a neonize
    # client object stops its Go client (by uuid) when collected, which would kill a new
    # client of the same tenant should it ever move back here (neonize-notes hazard 3).
    retired: list[Any] = field(default_factory=list)
    mover: Any = None

    def owner(self, tenant_id: str) -> int:
        return ring.owner(tenant_id, self.nodes)

    def owns(self, tenant_id: str) -> bool:
        return self.owner(tenant_id) == self.me

    def holds(self, tenant_id: str) -> bool:
        return tenant_id in self.app.supervisor.runners

    def where(self, tenant_id: str) -> dict[str, Any]:
        """This node's answer to "do you have it?" (GET /v1/cluster/tenants/{id})."""
        return {
            "tenant": tenant_id,
            "node": self.me,
            "held": self.holds(tenant_id),
            "moving": tenant_id in self.moving or tenant_id in self.importing,
            "owner": self.owner(tenant_id),
        }

    async def locate(self, tenant_id: str, skip: set[int]) -> tuple[int | None, str]:
        """Ask the other nodes who holds a tenant this node does not: (node, "held"), (None,
        "moving"), (None, "unavailable") when a node that might hold it does not answer, or
        (None, "absent")."""
        targets = [n for n in self.peers.others() if n not in skip]
        if not targets:
            return None, "absent"
        answers = await self.peers.fanout(
            f"/v1/cluster/tenants/{tenant_id}", self.peers.internal_headers(), targets
        )
        outcome = "absent"
        for n, res in sorted(answers.items()):
            if isinstance(res, PeerUnavailable):
                outcome = "unavailable" if outcome == "absent" else outcome
                continue
            status, body = res
            if status != 200 or not isinstance(body, dict):
                continue
            if body.get("held"):
                return n, "held"
            if body.get("moving"):
                outcome = "moving"
        return None, outcome


def node_of(app: App) -> Node:
    return app.extras["cluster"]


async def attach(app: App) -> Node:
    """Called by app.build() in cluster mode, before any tenant starts."""
    from oxyd.cluster import mover, proxy, routes

    cfg = app.cfg.cluster
    me = ring.node_ordinal(cfg.node)
    token = (await asyncio.to_thread(cfg.token_file.read_text)).strip()
    if len(token) < 16:
        raise ValueError(f"cluster.token_file: {cfg.token_file} holds fewer than 16 characters")
    from oxyd import log

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
    from oxyd.model import valid_tenant_id

    if not path.is_dir():
        return []
    return [p.name for p in path.iterdir() if p.is_dir() and valid_tenant_id(p.name)]
