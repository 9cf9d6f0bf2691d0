"""Control-port benchmark: 1,000 simulator tenants, GET /v1/tenants at 50 concurrent clients
(target p99 <= 25 ms) and GET /healthz requests per second (target >= 3,000/s).

    /tmp/venv/bin/python bench/http.py [--tenants 1000] [--clients 50] [--seconds 5]

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
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import aiohttp  # noqa: E402

TOKEN = "bench-admin-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, clients: int, seconds: float, headers: dict) -> list[float]:
    latencies_s: list[float] = []
    end = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

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
    args = ap.parse_args()
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
            print(
                f"{args.tenants} simulator tenants added and connected in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            await _load(f"{base}/v1/tenants", args.clients, 1.0, headers)  # warm-up
            lat = await _load(f"{base}/v1/tenants", args.clients, args.seconds, headers)
            p99_ms = _pct(lat, 0.99) * 1000
            print(
                f"GET /v1/tenants ({args.tenants} tenants, {args.clients} clients): "
                f"{len(lat) / args.seconds:.0f} req/s, p50 {statistics.median(lat) * 1000:.1f} ms,"
                f" p99 {p99_ms:.1f} ms (target <= 25 ms: {'OK' if p99_ms <= 25 else 'MISSED'})"
            )
            lat = await _load(f"{base}/healthz", args.clients, args.seconds, {})
            rps = len(lat) / args.seconds
            print(
                f"GET /healthz ({args.clients} clients): {rps:.0f} req/s, p99 "
                f"{_pct(lat, 0.99) * 1000:.1f} ms (target >= 3000/s: "
                f"{'OK' if rps >= 3000 else 'MISSED'})"
            )
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 30)


if __name__ == "__main__":
    asyncio.run(main())
