"""Sending benchmark (design §12): 10,000 queued sends across 50 simulator tenants with the
rate limit lifted. Figures: enqueue latency at a fixed offered rate (target p99 <= 20 ms at
500 req/s), sends/s from the first request to the last message sent, and that rate against
the writer's raw insert rate measured on the same daemon just before (a baseline in the same
run: the machine is shared and noisy, so only the ratio is comparable across runs).

    .venv/bin/python -P bench/sending.py [--tenants 50] [--sends 10000] [--rate 500]
    .venv/bin/python -P bench/sending.py --quick    # 10 tenants, 2,000 sends at 200/s

The daemon is the real `oxyd run` in a child process; the load generator is open-loop (each
request's latency counts from the moment it was due, so a stall is not hidden).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

TOKEN = "bench-admin-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count(db: Path, sql: str) -> int:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


async def _until(cond, timeout_s: float, what: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not await cond():
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def start_daemon(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXYD_")}
    env.update(
        OXYD_DATA_DIR=str(data_dir),
        OXYD_HTTP_PORT=str(port),
        OXYD_ADMIN_TOKEN=TOKEN,
        OXYD_LOG_LEVEL="WARNING",
        OXYD_SEND_RATE_PER_MIN="1000000000",  # the rate limit lifted
        OXYD_SEND_BURST="1000000",
        OXYD_SEND_QUEUE_MAX="100000",
    )
    return subprocess.Popen([sys.executable, "-m", "oxyd", "run"], env=env)


async def run(args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="oxyd-bench-send-")) / "data"
    port = _free_port()
    proc = await asyncio.to_thread(start_daemon, data_dir, port)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    db = data_dir / "oxyd.sqlite3"
    try:
        async with aiohttp.ClientSession(headers=headers) as http:

            async def up() -> bool:
                try:
                    async with http.get(base + "/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await _until(up, 30, "the daemon")
            tids = [f"s{i:03d}" for i in range(args.tenants)]
            for tid in tids:
                async with http.post(
                    base + "/v1/tenants", json={"id": tid, "engine": "simulator"}
                ) as r:
                    assert r.status == 201, await r.text()

            async def all_connected() -> bool:
                async with http.get(base + "/v1/tenants") as r:
                    ts = (await r.json())["tenants"]
                return all(t["state"] == "connected" for t in ts)

            await _until(all_connected, 60, "tenants connected")

            # Baseline: the writer's raw insert rate, same daemon, same size.
            per = args.sends // len(tids)
            t0 = time.perf_counter()
            for tid in tids:
                async with http.post(
                    f"{base}/v1/tenants/{tid}/simulate",
                    json={"action": "message", "chat": "15550009999", "text": "in", "count": per},
                ) as r:
                    assert r.status in (200, 202), await r.text()
            want = per * len(tids)

            async def stored() -> bool:
                n = await asyncio.to_thread(_count, db, "SELECT count(*) FROM messages")
                return n >= want

            await _until(stored, 300, "baseline rows stored")
            writer_rows_s = want / (time.perf_counter() - t0)

            # Open-loop enqueue at the offered rate.
            latencies_s: list[float] = []
            statuses: dict[int, int] = {}
            interval_s = 1.0 / args.rate
            start = time.perf_counter()

            async def one(i: int) -> None:
                due = start + i * interval_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                body = {"to": f"1555{i % 1000:07d}", "text": f"bench {i}"}
                async with http.post(
                    f"{base}/v1/tenants/{tids[i % len(tids)]}/messages", json=body
                ) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies_s.append(time.perf_counter() - due)

            await asyncio.gather(*(one(i) for i in range(args.sends)))
            enqueued_s = time.perf_counter() - start

            async def all_sent() -> bool:
                n = await asyncio.to_thread(
                    _count, db, "SELECT count(*) FROM outgoing WHERE status='sent'"
                )
                return n >= args.sends

            await _until(all_sent, 600, "every message sent")
            total_s = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(30)
    sends_s = args.sends / total_s
    return {
        "tenants": args.tenants,
        "sends": args.sends,
        "offered_rate_s": args.rate,
        "enqueue_p50_ms": _pct(latencies_s, 0.50) * 1000,
        "enqueue_p99_ms": _pct(latencies_s, 0.99) * 1000,
        "enqueue_max_ms": max(latencies_s) * 1000,
        "enqueue_seconds": enqueued_s,
        "statuses": statuses,
        "sends_per_s": sends_s,
        "writer_rows_s": writer_rows_s,
        "sends_vs_writer": sends_s / writer_rows_s,
        "p99_target_ms": 20.0,
        "loadavg": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--sends", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=500.0, help="offered requests per second")
    ap.add_argument("--quick", action="store_true", help="10 tenants, 2,000 sends at 200/s")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.tenants, args.sends, args.rate = 10, 2000, 200.0
    f = asyncio.run(run(args))
    print(
        f"enqueue at {f['offered_rate_s']:.0f}/s: p50 {f['enqueue_p50_ms']:.1f} ms,"
        f" p99 {f['enqueue_p99_ms']:.1f} ms (target <= 20), max {f['enqueue_max_ms']:.1f} ms;"
        f" answers {f['statuses']}"
    )
    print(
        f"{f['sends']} sends over {f['tenants']} tenants: {f['sends_per_s']:.0f} sends/s"
        f" (first request to last sent) vs the writer's raw {f['writer_rows_s']:.0f} rows/s"
        f" = {f['sends_vs_writer']:.2f}x; load average {f['loadavg']:.1f} (shared machine)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(f, indent=1))


if __name__ == "__main__":
    main()
