"""Sending benchmark (design §12): 10,000 queued sends across 50 simulator tenants with the
rate limit lifted. Figures: enqueue latency at a fixed offered rate (target p99 <= 20 ms at
500 req/s), sends/s while every tenant drains its queue, and that rate against
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


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process: robust to a busy machine, unlike wall time."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runq_wait_s(pid: int) -> float:
    """Seconds the daemon's threads spent runnable but waiting for a CPU (schedstat's second
    field): on a shared machine, the part of a latency tail that is not the daemon's doing."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total_ns / 1e9


def _server_quantiles(metrics: str) -> tuple[float, float]:
    """p50 and p99 of POST .../messages as the daemon measured them (upper bucket bounds of
    its request histogram): the load generator shares the machine, this does not count it."""
    route = 'route="/v1/tenants/{id}/messages"'
    buckets = []
    for line in metrics.splitlines():
        if line.startswith("oxyd_http_request_duration_seconds_bucket{") and route in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1]
    return tuple(  # type: ignore[return-value]
        next(le for le, n in buckets if n >= q * total) for q in (0.50, 0.99)
    )


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
    prof = os.environ.get("OXYD_BENCH_PROFILE")  # a cProfile output file, for finding hot spots
    pre = ["-m", "cProfile", "-o", prof] if prof else []
    return subprocess.Popen([sys.executable, *pre, "-m", "oxyd", "run"], env=env)


async def run(args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="oxyd-bench-send-")) / "data"
    port = _free_port()
    proc = await asyncio.to_thread(start_daemon, data_dir, port)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    db = data_dir / "oxyd.sqlite3"
    try:
        conn = aiohttp.TCPConnector(limit=2000)
        # No client-side timeout: a slow answer is a latency figure, not an error.
        no_limit = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(headers=headers, connector=conn, timeout=no_limit) as http:

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
            cpu0 = _cpu_s(proc.pid)
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
            writer_cpu_ms = (_cpu_s(proc.pid) - cpu0) * 1000 / want

            # Phase 1, enqueue only: the tenants are stopped, so every request is queued and
            # nothing is sent meanwhile; open loop at the offered rate.
            for tid in tids:
                async with http.post(f"{base}/v1/tenants/{tid}/stop") as r:
                    assert r.status == 202, await r.text()
            latencies_s: list[float] = []
            lags_s: list[float] = []  # how late this process started a request (its own lag)
            statuses: dict[int, int] = {}
            interval_s = 1.0 / args.rate
            cpu0 = _cpu_s(proc.pid)
            runq0 = _runq_wait_s(proc.pid)
            start = time.perf_counter()

            async def one(i: int, due: float) -> None:
                lags_s.append(time.perf_counter() - due)
                body = {"to": f"1555{i % 1000:07d}", "text": f"bench {i}"}
                url = f"{base}/v1/tenants/{tids[i % len(tids)]}/messages"
                async with http.post(url, json=body) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies_s.append(time.perf_counter() - due)

            # Each request is started when it is due (one task at a time, not 10,000 tasks
            # made up front: creating those stalled this process' loop for the first ones).
            pending: set[asyncio.Task] = set()
            for i in range(args.sends):
                due = start + i * interval_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(i, due))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
            enqueued_s = time.perf_counter() - start
            cpu_enqueue_s = _cpu_s(proc.pid) - cpu0
            runq_enqueue_s = _runq_wait_s(proc.pid) - runq0
            async with http.get(base + "/metrics") as r:
                server_p50_s, server_p99_s = _server_quantiles(await r.text())

            # Phase 2, send: start every tenant; the queues drain with the rate limit lifted.
            cpu0 = _cpu_s(proc.pid)
            start = time.perf_counter()
            for tid in tids:
                async with http.post(f"{base}/v1/tenants/{tid}/start") as r:
                    assert r.status == 202, await r.text()

            async def all_sent() -> bool:
                n = await asyncio.to_thread(
                    _count, db, "SELECT count(*) FROM outgoing WHERE status='sent'"
                )
                return n >= args.sends

            await _until(all_sent, 900, "every message sent")
            total_s = time.perf_counter() - start
            cpu_send_s = _cpu_s(proc.pid) - cpu0
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
        "client_lag_p99_ms": _pct(lags_s, 0.99) * 1000,
        "over_20ms_share": sum(x > 0.020 for x in latencies_s) / len(latencies_s),
        "runq_wait_ms_per_s": runq_enqueue_s * 1000 / enqueued_s,
        "runq_wait_ms_per_enqueue": runq_enqueue_s * 1000 / args.sends,
        "server_p50_ms_at_most": server_p50_s * 1000,
        "server_p99_ms_at_most": server_p99_s * 1000,
        "statuses": statuses,
        "sends_per_s": sends_s,
        "writer_rows_s": writer_rows_s,
        "sends_vs_writer": sends_s / writer_rows_s,
        "cpu_ms_per_enqueue": cpu_enqueue_s * 1000 / args.sends,
        "cpu_ms_per_send": cpu_send_s * 1000 / args.sends,
        "writer_cpu_ms_per_row": writer_cpu_ms,
        "sends_vs_writer_cpu": writer_cpu_ms / (cpu_send_s * 1000 / args.sends),
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
        f" p99 {f['enqueue_p99_ms']:.1f} ms (target <= 20), max {f['enqueue_max_ms']:.1f} ms"
        f" (this process started them up to {f['client_lag_p99_ms']:.1f} ms late at p99);"
        f" answers {f['statuses']}; in the daemon p50 <= {f['server_p50_ms_at_most']:g} ms,"
        f" p99 <= {f['server_p99_ms_at_most']:g} ms; {f['over_20ms_share']:.1%} over 20 ms"
    )
    print(
        f"while enqueueing, the daemon's threads waited {f['runq_wait_ms_per_s']:.0f} ms per"
        f" second for a CPU (runnable, not running: {f['runq_wait_ms_per_enqueue']:.2f} ms per"
        f" enqueue) against {f['cpu_ms_per_enqueue']:.2f} ms of CPU per enqueue"
    )
    print(
        f"{f['sends']} sends over {f['tenants']} tenants: {f['sends_per_s']:.0f} sends/s"
        f" (drain, all tenants started) vs the writer's raw {f['writer_rows_s']:.0f} rows/s"
        f" = {f['sends_vs_writer']:.2f}x; load average {f['loadavg']:.1f} (shared machine)"
    )
    print(
        f"daemon CPU: {f['cpu_ms_per_enqueue']:.2f} ms per enqueue (HTTP included),"
        f" {f['cpu_ms_per_send']:.2f} ms per send, {f['writer_cpu_ms_per_row']:.3f} ms per"
        f" ingested row: a send costs {1 / f['sends_vs_writer_cpu']:.0f}x a raw insert"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(f, indent=1))


if __name__ == "__main__":
    main()
