"""Start-up benchmark: 1,000 persisted simulator tenants, RSS per tenant, and mass drops.

    .venv/bin/python bench/startup.py            # default: 1,000 tenants
    .venv/bin/python bench/startup.py --quick    # smoke run: 100 tenants

1. Creates N simulator tenants once in a temporary data directory (a first in-process app run,
   then a clean stop), so they are persisted as an operator's would be.
2. Starts the real daemon (`python -m oxyd run`, OXYD_DATA_DIR on that directory) as a fresh
   process and times process start -> every tenant "connected" (polling GET /v1/tenants).
   Target: <= 5 s with zero simulated connect latency. Reads VmRSS from /proc/<pid>/status
   then, and does the same for a daemon with 0 tenants: (RSS_N - RSS_0) / N is the RSS per
   tenant above the empty daemon. Target: <= 100 KB.
3. In process (to read supervisor.gate), on the same data directory: every tenant drops at
   once, and the time until all are connected again is measured with the peak number of
   connects in flight (gate.peak, which must never exceed supervisor.connect_concurrency):
   - mass `disconnect`: the library reconnects by itself (no gate);
   - mass `disconnect` whose library reconnect fails (`fail_connects` 1 first): every tenant
     goes through oxyd's own backoff (base 2 s, jitter) and a gated reconnect;
   - mass restart through supervisor.restart_tenant (the gate, zero latency);
   - the same restart with 20 ms simulated connect latency, where the gate is the bottleneck.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/<name>.py`, Python puts bench/ first on sys.path, where a sibling bench
# module may shadow a stdlib one (bench/http.py shadows `http`): drop it, as `-m` would.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from loguru import logger

from oxyd import app as oxyd_app
from oxyd.clock import RealClock
from oxyd.config import load
from oxyd.model import State
from oxyd.simulator.engine import SimulatorEngine

TOKEN = "bench-admin-token"
PYTHON = sys.executable


# ---- helpers ----


async def until(cond, timeout_s: float, what: str, poll_s: float = 0.005) -> float:
    """Poll `cond` until true; returns the time it took. Raises TimeoutError at the deadline."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(poll_s)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(rest.split()[0])
    return vals["VmRSS"], vals["VmHWM"]


def cfg_for(data_dir: Path, **env: str):
    return load(env={"OXYD_DATA_DIR": str(data_dir), "OXYD_ADMIN_TOKEN": TOKEN, **env})


async def build_app(data_dir: Path, **env: str):
    cfg = cfg_for(data_dir, **env)
    clock = RealClock()
    engines = {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
    return await oxyd_app.build(cfg, clock, engines=engines)


def all_connected(app, since_mono: float = 0.0) -> bool:
    """Every tenant connected by a session that began after `since_mono` (the persisted state
    of a restored tenant says "connected" before it is; last_ok_mono is set on connect)."""
    return all(
        r.t.state is State.CONNECTED and r.last_ok_mono >= since_mono
        for r in app.supervisor.runners.values()
    )


# ---- 1. persisted tenants ----


async def create_tenants(data_dir: Path, n: int) -> None:
    app = await build_app(data_dir)
    await oxyd_app.start(app)
    try:
        for i in range(n):
            await app.supervisor.add(f"sim{i:04d}", "simulator")
        await until(lambda: all_connected(app), 120, f"{n} new tenants connected", 0.02)
    finally:
        await oxyd_app.stop(app)


# ---- 2. the real daemon ----


def _get(port: int, path: str, timeout_s: float = 5.0):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return resp.status, resp.read()


def daemon_run(data_dir: Path, expect: int, log_path: Path, timeout_s: float) -> dict:
    """Start `python -m oxyd run`, wait until `expect` tenants are connected; figures."""
    port = free_port()
    env = {
        **os.environ,
        "OXYD_DATA_DIR": str(data_dir),
        "OXYD_HTTP_PORT": str(port),
        "OXYD_ADMIN_TOKEN": TOKEN,
    }
    env.pop("OXYD_CONFIG", None)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        t0_ms = time.time_ns() // 1_000_000
        proc = subprocess.Popen(
            [PYTHON, "-m", "oxyd", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            t_http = t_all = None
            connected = stale = 0
            deadline = t0 + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {proc.returncode}; see {log_path}")
                if time.perf_counter() > deadline:
                    raise TimeoutError(
                        f"{connected}/{expect} connected after {timeout_s:g}s; see {log_path}"
                    )
                try:
                    status, body = _get(port, "/v1/tenants")
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.02)  # not listening yet: a poll interval, not a wait
                    continue
                tenants = json.loads(body)["tenants"] if status == 200 else []
                # A restored tenant shows its persisted state until its runner moves it, so
                # "connected" counts only when it became so in this process.
                now_conn = [
                    t["state_since_ms"] >= t0_ms for t in tenants if t["state"] == "connected"
                ]
                connected = sum(now_conn)
                if t_http is None:
                    t_http = time.perf_counter() - t0
                    stale = len(now_conn) - connected
                if status == 200 and len(tenants) == expect and connected == expect:
                    t_all = time.perf_counter() - t0
                    break
                time.sleep(0.05)
            rss, hwm = rss_kb(proc.pid)
            proc.send_signal(signal.SIGTERM)
            t_stop = time.perf_counter()
            rc = proc.wait(timeout=60)
            stop_s = time.perf_counter() - t_stop
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "http_s": t_http,
        "all_s": t_all,
        "rss_kb": rss,
        "hwm_kb": hwm,
        "rc": rc,
        "stop_s": stop_s,
        "stale": stale,
    }


# ---- 3. mass drops, in process ----


async def mass_drops(data_dir: Path, n: int, latency_ms: int) -> dict:
    app = await build_app(data_dir)
    sup = app.supervisor
    limit = app.cfg.supervisor.connect_concurrency
    out: dict = {"limit": limit}
    t0 = time.perf_counter()
    m0 = app.clock.monotonic()
    await oxyd_app.start(app)
    try:
        await until(lambda: len(sup.runners) == n and all_connected(app, m0), 120, "restore")
        out["inproc_start_s"] = time.perf_counter() - t0
        out["inproc_start_peak"] = sup.gate.peak
        tids = sorted(sup.runners)

        async def scenario(name: str, drop, done, timeout_s: float = 120) -> None:
            sup.gate.peak = sup.gate.in_flight
            total0 = sup.gate.total
            t = time.perf_counter()
            m = app.clock.monotonic()
            await drop()
            await until(lambda: done() and all_connected(app, m), timeout_s, f"all back: {name}")
            out[name] = {
                "s": time.perf_counter() - t,
                "peak": sup.gate.peak,
                "connects": sup.gate.total - total0,
            }

        async def simulate_all(*actions: dict) -> None:
            for tid in tids:
                for a in actions:
                    await sup.simulate(tid, a)

        def reconnected(base: int):
            return lambda: sum(sup.reconnects.values()) - base >= n

        base = sum(sup.reconnects.values())
        await scenario(
            "disconnect", lambda: simulate_all({"action": "disconnect"}), reconnected(base)
        )

        total0 = sup.gate.total
        await scenario(
            "disconnect, library reconnect fails",
            lambda: simulate_all({"action": "fail_connects", "count": 1}, {"action": "disconnect"}),
            lambda: sup.gate.total - total0 >= n,
        )

        async def restart_all() -> None:
            await asyncio.gather(*(sup.restart_tenant(tid) for tid in tids))

        await scenario("restart", restart_all, lambda: True)

        engine = app.engines["simulator"]
        engine.cfg = dataclasses.replace(engine.cfg, connect_latency_ms=latency_ms)
        await scenario(
            f"restart, {latency_ms} ms connect latency",
            restart_all,
            lambda: True,
            timeout_s=n * latency_ms / 1000 / limit * 4 + 60,
        )
        out["broken"] = sup.broken
    finally:
        await oxyd_app.stop(app)
    return out


# ---- main ----


def _table(rows: list[tuple[str, ...]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [f"{r[0]:<{w[0]}}"] + [f"{c:>{w[i + 1]}}" for i, c in enumerate(r[1:-1])]
        lines.append("  " + "  ".join(cells) + "  " + r[-1])
        if j == 0:
            lines.append("  " + "-" * (sum(w) + 2 * len(w)))
    return "\n".join(lines)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tenants", type=int, default=1_000, help="simulator tenants (1000)")
    ap.add_argument("--latency-ms", type=int, default=20, help="connect latency, last scenario")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 tenants")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.tenants = 100
    n = args.tenants

    tmp = tempfile.mkdtemp(prefix="oxyd-startup-")
    root = Path(tmp)
    bench_log = root / "bench.log"
    logger.remove()
    logger.add(bench_log, level="INFO")  # the daemon's own cost of logging, off the terminal
    print(f"data and logs in {root}" + ("" if args.keep else " (removed at the end)"))

    data = root / "data"
    empty = root / "empty"
    print(f"creating {n} simulator tenants...", flush=True)
    t = time.perf_counter()
    await create_tenants(data, n)
    print(f"  created in {time.perf_counter() - t:.1f} s", flush=True)

    print("daemon with 0 tenants...", flush=True)
    d0 = await asyncio.to_thread(daemon_run, empty, 0, root / "daemon0.log", 60)
    print(f"daemon with {n} tenants...", flush=True)
    dn = await asyncio.to_thread(daemon_run, data, n, root / "daemonN.log", 120)
    per_tenant_kb = (dn["rss_kb"] - d0["rss_kb"]) * 1.024 / n  # KiB -> kB

    print("mass drops (in process)...", flush=True)
    md = await mass_drops(data, n, args.latency_ms)

    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)

    if args.json:
        figures = {
            "tenants": n,
            "daemon0": d0,
            "daemonN": dn,
            "rss_per_tenant_kb": per_tenant_kb,
            "mass_drops": md,
        }
        await asyncio.to_thread(
            Path(args.json).write_text, json.dumps(figures, indent=1, default=str)
        )

    ok = lambda b: "ok" if b else "MISSED"  # noqa: E731
    limit = md["limit"]
    print()
    print(f"oxyd start-up benchmark ({n} simulator tenants, connect_concurrency={limit})")
    rows = [
        ("figure", "value", "target"),
        ("daemon 0 tenants: start -> HTTP up", f"{d0['http_s']:.2f} s", "(info)"),
        ("daemon 0 tenants: VmRSS", f"{d0['rss_kb'] / 1024:.1f} MiB", "(info)"),
        (f"daemon {n}: start -> HTTP up", f"{dn['http_s']:.2f} s", "(info)"),
        (
            f"daemon {n}: stale 'connected' at HTTP up",
            f"{dn['stale']}",
            "persisted state shown before the tenant connected",
        ),
        (
            f"daemon {n}: start -> all connected",
            f"{dn['all_s']:.2f} s",
            f"<= 5 s {ok(dn['all_s'] <= 5)}",
        ),
        (
            f"daemon {n}: VmRSS / VmHWM",
            f"{dn['rss_kb'] / 1024:.1f} / {dn['hwm_kb'] / 1024:.1f} MiB",
            "(info)",
        ),
        (
            "RSS per tenant above empty",
            f"{per_tenant_kb:.1f} kB",
            f"<= 100 kB {ok(per_tenant_kb <= 100)}",
        ),
        (f"daemon {n}: SIGTERM -> exit", f"{dn['stop_s']:.2f} s (rc {dn['rc']})", "(info)"),
        (
            "in-process start -> all connected",
            f"{md['inproc_start_s']:.2f} s",
            f"peak {md['inproc_start_peak']} in flight",
        ),
    ]
    for name in (k for k, v in md.items() if isinstance(v, dict)):
        r = md[name]
        rows.append(
            (
                f"all drop: {name}",
                f"{r['s']:.2f} s",
                f"peak {r['peak']}/{limit} in flight, {r['connects']} gated connects "
                f"{ok(r['peak'] <= limit)}",
            )
        )
    print(_table(rows))
    if md.get("broken"):
        print(f"SUPERVISOR BROKEN: {md['broken']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
