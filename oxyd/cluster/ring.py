"""Who owns a tenant: rendezvous (highest random weight) hashing over the node ordinals.

Every node computes the same answer from (tenant id, node count) alone, with no shared state.
When the count changes from N to N+1, a tenant moves only if the new node scores highest for
it: about 1/(N+1) of them, and never between two old nodes.
"""

from __future__ import annotations

import hashlib
import re
import socket

_ORDINAL = re.compile(r"-(\d+)$")


def score(tenant_id: str, node: int) -> int:
    # blake2b is fast and stable across processes and Python versions (hash() is salted).
    digest = hashlib.blake2b(f"{node}\0{tenant_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(tenant_id: str, nodes: int) -> int:
    """The node (0 .. nodes-1) that owns `tenant_id`."""
    return max(range(nodes), key=lambda n: score(tenant_id, n))


def node_ordinal(setting: str, hostname: str | None = None) -> int:
    """`cluster.node`: an ordinal, or `auto` for the number ending the hostname, as a
    StatefulSet names its pods (`oxyd-2` is node 2). Raises ValueError when there is none."""
    if setting != "auto":
        return int(setting)
    name = (hostname or socket.gethostname()).split(".")[0]
    m = _ORDINAL.search(name)
    if m is None:
        raise ValueError(
            f"cluster.node is auto but the hostname {name!r} does not end in -<ordinal>;"
            " set cluster.node (OXYD_CLUSTER_NODE) to this node's number"
        )
    return int(m.group(1))


def peer_url(template: str, node: int) -> str:
    return template.replace("{n}", str(node)).rstrip("/")
