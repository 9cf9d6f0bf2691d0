"""Control-port benchmark: 1,000 simulator tenants, GET /v1/tenants at 50 concurrent clients
(target p99 <= 25 ms) and GET /healthz requests per second (target >= 3,000/s).

    .venv/bin/python -P bench/http_api.py [--tenants 1000] [--clients 50] [--seconds 5]
    .venv/bin/python -P bench/http_api.py --quick    # 100 tenants, 2 s per figure

The server is the real app (real store, supervisor, simulator engine) on a real TCP socket in a
child process, so the load generator does not share its event loop or its CPU time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: run as a script, its folder comes first on sys.path and would
# shadow the standard library's `http` (which aiohttp imports). Drop the folder first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import aiohttp  # noqa: E402

TOKEN = "bench-admin-token-0123456789abcdef"


BARE = r"""
import asyncio
from aiohttp import web
async def healthz(request):
    return web.json_response({"status": "ok"})
async def main():
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, clients: int, seconds: float, headers: dict) -> list[float]:
    latencies_s: list[float] = []
    end = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=clients)
    # The load generator shares the 2 cores with the daemon: it takes the bytes as sent
    # (gzip for the tenant list) without spending CPU to inflate them.
    async with aiohttp.ClientSession(
        connector=conn, headers=headers, auto_decompress=False
    ) as session:

        async def worker() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                async with session.get(url) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies_s.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies_s


def _probe(url: str) -> None:
    urllib.request.urlopen(url, timeout=1).close()


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def _add_tenants(base: str, n: int, headers: dict) -> None:
    async with aiohttp.ClientSession(headers=headers) as session:
        sem = asyncio.Semaphore(32)

        async def add(i: int) -> None:
            async with (
                sem,
                session.post(
                    f"{base}/v1/tenants", json={"id": f"t{i:04d}", "engine": "simulator"}
                ) as r,
            ):
                assert r.status == 201, await r.text()

        await asyncio.gather(*(add(i) for i in range(n)))
        while True:  # wait until every tenant is connected, so the list is steady
            async with session.get(f"{base}/v1/tenants") as r:
                states = [t["state"] for t in (await r.json())["tenants"]]
            if states.count("connected") == n:
                return
            await asyncio.sleep(0.2)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 tenants, 2 s")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.tenants, args.seconds = 100, 2.0
    figures: dict = {"tenants": args.tenants, "clients": args.clients, "seconds": args.seconds}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with tempfile.TemporaryDirectory() as data:
        env = {
            **os.environ,
            "OXYD_DATA_DIR": data,
            "OXYD_HTTP_PORT": str(port),
            "OXYD_ADMIN_TOKEN": TOKEN,
            "OXYD_LOG_LEVEL": "WARNING",
            "OXYD_SUPERVISOR_CONNECT_CONCURRENCY": "64",
        }
        # Popen only forks and execs: it does not wait on the child.
        proc = subprocess.Popen([sys.executable, "-m", "oxyd", "run"], env=env)  # noqa: ASYNC220
        try:
            for _ in range(200):
                try:
                    await asyncio.to_thread(_probe, base + "/healthz")
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await _add_tenants(base, args.tenants, headers)
            figures["add_s"] = time.perf_counter() - t0
            print(
                f"{args.tenants} simulator tenants added and connected in {figures['add_s']:.1f} s"
            )
            await _load(f"{base}/v1/tenants", args.clients, 1.0, headers)  # warm-up
            lat = await _load(f"{base}/v1/tenants", args.clients, args.seconds, headers)
            p99_ms = _pct(lat, 0.99) * 1000
            figures["tenants_rps"] = len(lat) / args.seconds
            figures["tenants_p50_ms"] = statistics.median(lat) * 1000
            figures["tenants_p99_ms"] = p99_ms
            print(
                f"GET /v1/tenants ({args.tenants} tenants, {args.clients} clients): "
                f"{len(lat) / args.seconds:.0f} req/s, p50 {statistics.median(lat) * 1000:.1f} ms,"
                f" p99 {p99_ms:.1f} ms (target <= 25 ms: {'OK' if p99_ms <= 25 else 'MISSED'})"
            )
            lat = await _load(f"{base}/healthz", args.clients, args.seconds, {})
            rps = len(lat) / args.seconds
            figures["healthz_rps"] = rps
            figures["healthz_p99_ms"] = _pct(lat, 0.99) * 1000
            print(
                f"GET /healthz ({args.clients} clients): {rps:.0f} req/s, p99 "
                f"{_pct(lat, 0.99) * 1000:.1f} ms (target >= 3000/s: "
                f"{'OK' if rps >= 3000 else 'MISSED'})"
            )
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 30)
    # Baseline, same load generator and client count: a bare aiohttp app answering the same
    # JSON in a child process (what the framework costs without oxyd).
    bare = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BARE, stdout=asyncio.subprocess.PIPE
    )
    try:
        bare_port = int(await asyncio.wait_for(bare.stdout.readline(), 30))
        lat = await _load(f"http://127.0.0.1:{bare_port}/healthz", args.clients, args.seconds, {})
        figures["bare_rps"] = len(lat) / args.seconds
        print(
            f"baseline: bare aiohttp /healthz ({args.clients} clients): "
            f"{figures['bare_rps']:.0f} req/s; oxyd / bare "
            f"{figures['healthz_rps'] / figures['bare_rps']:.2f}"
        )
    finally:
        bare.terminate()
        await bare.wait()
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
