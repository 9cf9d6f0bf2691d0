"""Cluster benchmark (design §16, issue 18), real `oxyd run` processes on 127.0.0.1x:

1. proxy overhead: GET /v1/tenants/{id}/messages (100 messages per page) asked of a node that
   does not hold the tenant (proxied) vs of the node that does. Requests alternate between
   the two paths, so machine noise hits both alike. Target: p99 proxied <= 1.5x p99 direct.
2. scale-out: 100 tenants with 10,000 messages each on node 0 alone, then node 0 restarts with
   cluster.nodes=2 and node 1 joins: time until node 1 runs all of them (every one of these
   tenants is owned by node 1, so all move).

    python -P bench/cluster.py [--tenants 100] [--messages 10000] [--requests 2000]
    python -P bench/cluster.py --quick        # 10 tenants x 2,000 messages, 500 requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from oxyd.cluster.ring import owner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster_helpers import TOKEN, free_cluster_port
from cluster_helpers import Node as ClusterNode

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Node(ClusterNode):
    """The e2e tests' node (tests/cluster_helpers.py: one copy of the start-up code), with this
    bench's settings: quiet logs, moves retried every second, the daemon's own grace periods."""

    def __init__(self, root: Path, n: int, port: int) -> None:
        super().__init__(
            root,
            n,
            port,
            OXYD_LOG_LEVEL="WARNING",
            OXYD_CLUSTER_MOVE_INTERVAL_S="1",
            OXYD_CLUSTER_PEER_TIMEOUT_S="5",
            OXYD_SUPERVISOR_STOP_GRACE_S="10",
        )

    def start(self, nodes: int) -> None:  # type: ignore[override]
        super().start(nodes, wait=False)
        self.wait_up(timeout_s=120)

    def post(self, path: str, body: dict) -> int:
        return self.call("POST", path, body, timeout_s=120)[0]

    def local(self) -> dict[str, dict]:
        code, body, _ = self.call("GET", "/v1/tenants", headers={"X-Oxyd-Scope": "node"})
        return {t["id"]: t for t in body["tenants"]} if code == 200 else {}

    def stop(self) -> None:  # type: ignore[override]
        super().stop(timeout_s=120)  # a node with a million messages takes a while to drain


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def proxy_overhead(nodes: list[Node], tid: str, holder: int, requests: int) -> dict:
    other = 1 - holder
    path = f"/v1/tenants/{tid}/messages?limit=100"
    times: dict[str, list[float]] = {"direct": [], "proxied": []}
    async with aiohttp.ClientSession(headers=AUTH) as s:
        for _ in range(50):  # warm both paths (connection pools, caches)
            for n in (holder, other):
                async with s.get(nodes[n].url(path)) as r:
                    await r.read()
        for i in range(requests * 2):
            which = "direct" if i % 2 == 0 else "proxied"
            n = holder if which == "direct" else other
            started = time.perf_counter()
            async with s.get(nodes[n].url(path)) as r:
                body = await r.read()
                assert r.status == 200, body[:200]
            times[which].append(time.perf_counter() - started)
    out = {}
    for which, ts in times.items():
        out[which] = {
            "p50_ms": round(statistics.median(ts) * 1000, 2),
            "p99_ms": round(pct(ts, 99) * 1000, 2),
        }
    out["p99_ratio"] = round(out["proxied"]["p99_ms"] / out["direct"]["p99_ms"], 2)
    out["p50_ratio"] = round(out["proxied"]["p50_ms"] / out["direct"]["p50_ms"], 2)
    out["requests_each"] = requests
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=100)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.tenants, args.messages, args.requests = 10, 2000, 500
    root = Path(tempfile.mkdtemp(prefix="oxyd-bench-cluster-"))
    port = free_cluster_port(2)
    nodes = [Node(root, 0, port), Node(root, 1, port)]
    load_before = os.getloadavg()
    figures: dict = {"tenants": args.tenants, "messages_each": args.messages}
    try:
        # Tenants that node 1 owns once there are two nodes, all on node 0 while it is alone.
        ids = [t for t in (f"bench-{i:05d}" for i in range(args.tenants * 4)) if owner(t, 2) == 1]
        ids = ids[: args.tenants]
        nodes[0].start(1)
        for tid in ids:
            assert nodes[0].post("/v1/tenants", {"id": tid, "engine": "simulator"}) == 201
        deadline = time.monotonic() + 120
        while any(t["state"] != "connected" for t in nodes[0].local().values()):
            assert time.monotonic() < deadline, "tenants did not connect"
            time.sleep(0.2)
        fill_started = time.monotonic()
        for tid in ids:
            body = {
                "action": "message",
                "chat": "15550001111",
                "text": "m" * 80,
                "count": args.messages,
            }
            assert nodes[0].post(f"/v1/tenants/{tid}/simulate", body) == 202
        while (
            sum(t["messages_stored"] for t in nodes[0].local().values()) < len(ids) * args.messages
        ):
            time.sleep(0.5)
        figures["fill_s"] = round(time.monotonic() - fill_started, 1)
        db_bytes = (root / "node0" / "oxyd.sqlite3").stat().st_size
        figures["db_mb"] = round(db_bytes / 1e6, 1)

        # Scale out 1 -> 2: every one of these tenants moves to node 1.
        nodes[0].stop()
        nodes[0].start(2)
        started = time.monotonic()
        nodes[1].start(2)
        ready = time.monotonic()
        figures["node1_start_s"] = round(ready - started, 1)
        while len(nodes[1].local()) < len(ids):
            assert time.monotonic() - started < 3600, "the move did not finish"
            time.sleep(0.2)
        # From node 1 ready: node 0 begins within move_interval_s (1 s here) of that.
        move_s = time.monotonic() - ready
        moved = nodes[1].local()
        assert all(moved[t]["messages_stored"] == args.messages for t in ids)
        figures["move_s"] = round(move_s, 1)
        figures["move_per_tenant_s"] = round(move_s / len(ids), 3)
        figures["move_messages_per_s"] = round(len(ids) * args.messages / move_s)

        figures["proxy"] = asyncio.run(proxy_overhead(nodes, ids[0], 1, args.requests))
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
    figures["load_before"] = [round(x, 2) for x in load_before]
    figures["load_after"] = [round(x, 2) for x in os.getloadavg()]
    p = figures["proxy"]
    print(
        f"scale-out: {len(ids)} tenants x {args.messages:,} messages moved in "
        f"{figures['move_s']} s ({figures['move_per_tenant_s']} s per tenant, "
        f"{figures['move_messages_per_s']:,} messages/s; database {figures['db_mb']} MB)"
    )
    print(
        f"proxy: GET messages p99 {p['proxied']['p99_ms']} ms proxied vs "
        f"{p['direct']['p99_ms']} ms direct = {p['p99_ratio']}x (target <= 1.5); "
        f"p50 {p['proxied']['p50_ms']} vs {p['direct']['p50_ms']} ms = {p['p50_ratio']}x"
    )
    print(f"load average before {figures['load_before']}, after {figures['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
