"""Webhook delivery benchmark: deliveries per second and delay from commit to delivery.

    python -P bench/webhooks.py [--events 20000] [--destinations 4] [--rate 1000]
    python -P bench/webhooks.py --quick    # 2,000 events, 1,000 latency events

(-P: bench/http.py must not shadow the standard library's http package.)

Phase 1 (throughput): N events already committed, spread over the destinations; the time
from start() until the receiver has acknowledged all of them.
Phase 2 (latency): events committed at a steady --rate in small transactions with kick()
after each commit (what the writer does); delay = receiver arrival - end of the commit.

The receiver runs in a child process (its own CPU), as a real application would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from oxyd.clock import RealClock
from oxyd.config import WebhooksConfig
from oxyd.model import Tenant
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.webhooks import Dispatcher

RECEIVER = r"""
import json, sys, time
from aiohttp import web
arrivals = {}
async def hook(request):
    body = await request.read()
    arrivals.setdefault(request.headers["X-Oxyd-Event-Id"], time.time())
    return web.Response(text="ok")
async def stats(request):
    return web.json_response({"count": len(arrivals)})
async def dump(request):
    return web.json_response(arrivals)
async def reset(request):
    arrivals.clear()
    return web.json_response({})
async def main():
    app = web.Application()
    app.router.add_post("/{name}", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/dump", dump)
    app.router.add_post("/_reset", reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
import asyncio
asyncio.run(main())
"""


async def receiver_count(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/stats") as r:
        return (await r.json())["count"]


async def poll(probe, want: int, timeout_s: float = 300) -> None:
    """Until probe() reaches `want` (>= for counts going up, == 0 for queues draining)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await probe()
        if (got >= want) if want else got == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {got} instead of {want}")
        await asyncio.sleep(0.02)


async def wait_count(http, base, n: int) -> None:
    await poll(lambda: receiver_count(http, base), want=n)


async def raw_posts(base: str, tenants: list[str], n: int) -> float:
    body = json.dumps({"event": "message.received", "tenant": "t0", "data": {"n": 0}}).encode()
    headers = {"Content-Type": "application/json", "X-Oxyd-Event-Id": "x"}
    conn = aiohttp.TCPConnector(limit=100, limit_per_host=20)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def sender(t: str, k: int) -> None:
            for i in range(k):
                h = {**headers, "X-Oxyd-Event-Id": f"raw-{t}-{i}"}
                async with http.post(f"{base}/{t}", data=body, headers=h) as r:
                    await r.read()
                    assert r.status == 200, r.status

        t0 = time.perf_counter()
        await asyncio.gather(*(sender(t, n // len(tenants)) for t in tenants))
        return (n // len(tenants) * len(tenants)) / (time.perf_counter() - t0)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def run(args) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECEIVER, stdout=asyncio.subprocess.PIPE
    )
    try:
        port = int(await proc.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            store = await Store.open(Path(tmp))
            subs = outbox.Subscriptions()
            tenants = [f"t{i}" for i in range(args.destinations)]
            for t in tenants:
                await store.add_tenant(Tenant(id=t, engine="simulator"))
                await store.set_webhook(t, f"{base}/{t}", "bench-secret", None, 0)
                subs.set_tenant(t, None)
            clock = RealClock()
            async with aiohttp.ClientSession() as http:
                # Phase 1: a backlog.
                rows = []
                for i in range(args.events):
                    t = tenants[i % len(tenants)]
                    rows += outbox.rows(subs, t, "message.received", {"n": i}, clock.now_ms())
                for i in range(0, len(rows), 1000):
                    await store.append_outbox(rows[i : i + 1000])
                disp = Dispatcher(store, WebhooksConfig(), clock)
                t0 = time.perf_counter()
                await disp.start()
                await wait_count(http, base, args.events)
                elapsed = time.perf_counter() - t0
                await poll(disp.pending, want=0)  # the last delivered marks
                figures = {
                    "events": args.events,
                    "destinations": args.destinations,
                    "deliveries_s": args.events / elapsed,
                }
                print(
                    f"throughput: {args.events} events over {args.destinations} destinations"
                    f" in {elapsed:.2f}s = {args.events / elapsed:,.0f} deliveries/s"
                )

                # Phase 2: steady commits, kick() after each, as the writer does.
                async with http.post(f"{base}/_reset"):
                    pass
                committed: dict[str, float] = {}
                per_commit = max(1, args.rate // 100)
                n = args.latency_events
                t_start = time.perf_counter()
                for i in range(0, n, per_commit):
                    batch = []
                    for j in range(i, min(n, i + per_commit)):
                        t = tenants[j % len(tenants)]
                        batch += outbox.rows(subs, t, "message.received", {"n": j}, clock.now_ms())
                    await store.append_outbox(batch)
                    now = time.time()
                    for r in batch:
                        committed[r[0]] = now
                    disp.kick()
                    # Pace to the offered rate.
                    ahead_s = (i + per_commit) / args.rate - (time.perf_counter() - t_start)
                    if ahead_s > 0:
                        await asyncio.sleep(ahead_s)
                await wait_count(http, base, n)
                async with http.get(f"{base}/dump") as r:
                    arrivals = await r.json()
                delays_ms = [(arrivals[k] - committed[k]) * 1000 for k in committed]
                print(
                    f"latency at {args.rate}/s offered, {n} events: commit -> delivery"
                    f" p50 {statistics.median(delays_ms):.1f} ms,"
                    f" p99 {pct(delays_ms, 99):.1f} ms, max {max(delays_ms):.1f} ms"
                )
                figures.update(
                    latency_rate=args.rate,
                    latency_events=n,
                    latency_p50_ms=statistics.median(delays_ms),
                    latency_p99_ms=pct(delays_ms, 99),
                    latency_max_ms=max(delays_ms),
                    stats=disp.stats.as_dict(),
                )
                print(f"stats: {json.dumps(disp.stats.as_dict())}")
                await disp.stop()

                # Baseline: plain aiohttp POSTs to the same receiver, one sequential sender
                # per destination as the dispatcher has (delivery order per destination).
                figures["raw_posts_s"] = await raw_posts(base, tenants, args.events)
                print(
                    f"baseline: plain aiohttp POSTs, {args.destinations} sequential senders:"
                    f" {figures['raw_posts_s']:,.0f}/s; dispatcher / plain"
                    f" {figures['deliveries_s'] / figures['raw_posts_s']:.2f}"
                )
            await store.close()
    finally:
        proc.terminate()
        await proc.wait()
    return figures


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--destinations", type=int, default=4)
    p.add_argument("--rate", type=int, default=1000, help="offered events/s in phase 2")
    p.add_argument("--latency-events", type=int, default=5000)
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 + 1,000 events")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.events, args.latency_events = 2_000, 1_000
    figures = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
