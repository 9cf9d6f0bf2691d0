"""This node in the cluster: who it is, its peers, which tenants are in flight. How it is
wired into the app is wiring.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oxyd.app import App
from oxyd.cluster import ring
from oxyd.cluster.peers import Peers, PeerUnavailable

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
