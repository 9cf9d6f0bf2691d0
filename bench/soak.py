"""Soak: "24-hour behaviour in miniature". Steady load against the real daemon; RSS and open
file descriptors must stay flat.

    .venv/bin/python -P bench/soak.py              # 10 minutes
    .venv/bin/python -P bench/soak.py --quick      # 1 minute
    .venv/bin/python -P bench/soak.py --minutes 60 --tenants 200 --rate 500

What runs, all on 127.0.0.1:

- the real daemon, `python -m oxyd run`, as a child process on a fresh data directory;
- a webhook receiver in its own child process (aiohttp, answers 200, counts what arrives);
- N simulator tenants (default 50) added through POST /v1/tenants, each with a webhook to the
  receiver, so every stored message also goes through the durable outbox and a delivery;
- a load generator (this process): `message` simulate calls at --rate messages/s in 100 ms
  ticks (a few tenants per tick, `count` messages each); every --disconnect-s a few random
  tenants get `{"action": "disconnect"}` (the library reconnects by itself); every
  --restart-s one random tenant is restarted (POST /v1/tenants/{id}/restart, the gated path).

Every --sample-s the daemon's VmRSS (/proc/<pid>/status) and open fds (/proc/<pid>/fd) are
read. After the warm-up (default: the first 20% of the run, at least 15 s) the least-squares
slope of each is computed.

Flat means: |slope| x 10 min < 1% of the mean level after warm-up (for RSS), and
|slope| x 10 min < max(2 fds, 1% of the level) for fds. The 24-hour projection of the RSS
slope is printed too (for information: a slope measured over minutes is dominated by noise
of about a MiB, so only the threshold above is a verdict).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/soak.py`, bench/ comes first on sys.path and a sibling module could
# shadow a stdlib one: drop it, as `-m` or `-P` would.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import aiohttp

TOKEN = "bench-soak-admin-token-0123456789"
WEBHOOK_SECRET = "bench-soak-secret"

RECEIVER = r"""
import asyncio, sys
from aiohttp import web
count = 0
async def hook(request):
    global count
    await request.read()
    count += 1
    return web.Response(text="ok")
async def stats(request):
    return web.json_response({"count": count})
async def main():
    app = web.Application()
    app.router.add_post("/hook/{name}", hook)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

# --tracemalloc: the daemon runs with a SIGUSR2 hook. The first SIGUSR2 (at the end of the
# warm-up) starts tracemalloc, so start-up imports are not traced (tracing them takes minutes);
# the second writes what was allocated since then and is still alive, largest first, to
# SOAK_TRACE_OUT. Tracing costs CPU and memory of its own: that run's RSS is not the verdict,
# it says what grows.
TRACED_DAEMON = r"""
import os, runpy, signal, sys, tracemalloc
def snap(signum, frame):
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ["SOAK_TRACE_FRAMES"]))
        return
    s = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
    ])
    lines = [f"traced now {tracemalloc.get_traced_memory()[0] / 1024:.0f} KiB"]
    for st in s.statistics("traceback")[:20]:
        lines.append(f"{st.size / 1024:+.1f} KiB ({st.count} blocks)")
        lines.extend("    " + ln for ln in st.traceback.format()[-6:])
    tmp = os.environ["SOAK_TRACE_OUT"] + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.environ["SOAK_TRACE_OUT"])
signal.signal(signal.SIGUSR2, snap)
sys.argv = ["oxyd", "run"]
runpy.run_module("oxyd", run_name="__main__", alter_sys=True)
"""

# --sqlite-cache-kib: the daemon runs with every SQLite connection's page cache set to that size
# (`PRAGMA cache_size=-N`; SQLite's default is 2,000 KiB per connection, and the daemon keeps
# three: writer, reader, outbox). The cache fills as the database grows: a run with a small
# cache beside a default one says how much of a slow RSS rise is SQLite's cache filling.
CACHE_DAEMON = r"""
import os, runpy, sqlite3, sys
kib = int(os.environ["SOAK_SQLITE_CACHE_KIB"])
connect = sqlite3.connect
def sized(*args, **kwargs):
    con = connect(*args, **kwargs)
    con.execute(f"PRAGMA cache_size=-{kib}")
    return con
sqlite3.connect = sized
sys.argv = ["oxyd", "run"]
runpy.run_module("oxyd", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_sample(pid: int) -> dict:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "Threads"):
            vals[key] = int(rest.split()[0])
    # Anonymous memory (heap, arenas, SQLite caches) apart from file-backed pages (libraries):
    # growth in the first is the kind worth chasing.
    anon_kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            anon_kb = int(line.split()[1])
    return {
        "rss_kb": vals["VmRSS"],
        "anon_kb": anon_kb,
        "threads": vals["Threads"],
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


async def wait_http(session: aiohttp.ClientSession, url: str, proc, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not answering after {timeout_s:g}s")
        await asyncio.sleep(0.05)


async def queue_depth(session: aiohttp.ClientSession, base: str) -> int:
    """Events waiting for the writer (/metrics): a daemon that falls behind its load holds
    them in memory, and then RSS measures the backlog, not a leak."""
    try:
        async with session.get(f"{base}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith("oxyd_writer_queue_depth "):
                    return int(float(line.split()[1]))
    except (aiohttp.ClientError, TimeoutError):
        pass
    return -1


async def states(session: aiohttp.ClientSession, base: str) -> list[str]:
    async with session.get(f"{base}/v1/tenants") as r:
        return [t["state"] for t in (await r.json())["tenants"]]


async def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="oxyd-soak-"))
    data = root / "data"
    log_path = root / "daemon.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    env = {
        **os.environ,
        "OXYD_DATA_DIR": str(data),
        "OXYD_HTTP_PORT": str(port),
        "OXYD_ADMIN_TOKEN": TOKEN,
        "OXYD_LOG_LEVEL": args.log_level,
    }
    env.pop("OXYD_CONFIG", None)
    rx = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECEIVER, stdout=asyncio.subprocess.PIPE
    )
    log = open(log_path, "wb")  # noqa: ASYNC230  (closed in finally, after the child)
    # Popen forks and execs, it does not wait on the child.
    cmd = [sys.executable, "-m", "oxyd", "run"]
    trace_out = root / "tracemalloc.txt"
    if args.sqlite_cache_kib is not None:
        cmd = [sys.executable, "-c", CACHE_DAEMON]
        env.update(SOAK_SQLITE_CACHE_KIB=str(args.sqlite_cache_kib))
    if args.tracemalloc:
        cmd = [sys.executable, "-c", TRACED_DAEMON]
        env.update(SOAK_TRACE_FRAMES=str(args.tracemalloc), SOAK_TRACE_OUT=str(trace_out))
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    traced_at: list[float] = []
    rng = random.Random(args.seed)
    counts = {"simulate": 0, "messages": 0, "not_connected": 0, "errors": 0}
    counts.update(disconnects=0, restarts=0)
    samples: list[dict] = []
    out: dict = {"tenants": args.tenants, "rate": args.rate, "minutes": args.minutes}
    failed = True
    try:
        rx_port = int(await asyncio.wait_for(rx.stdout.readline(), 30))
        rx_base = f"http://127.0.0.1:{rx_port}"
        conn = aiohttp.TCPConnector(limit=32)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            connector=conn, headers=headers, timeout=timeout
        ) as session:
            await wait_http(session, f"{base}/healthz", proc, 60)
            tids = [f"soak{i:03d}" for i in range(args.tenants)]
            for tid in tids:
                body = {
                    "id": tid,
                    "engine": "simulator",
                    "webhook": {"url": f"{rx_base}/hook/{tid}", "secret": WEBHOOK_SECRET},
                }
                async with session.post(f"{base}/v1/tenants", json=body) as r:
                    assert r.status == 201, await r.text()
            deadline = time.monotonic() + 60
            while (await states(session, base)).count("connected") < args.tenants:
                if time.monotonic() > deadline:
                    raise TimeoutError("tenants not all connected after 60 s")
                await asyncio.sleep(0.1)

            async def post(path: str, body: dict | None) -> None:
                try:
                    async with session.post(f"{base}{path}", json=body) as r:
                        await r.read()
                        if r.status == 409:
                            counts["not_connected"] += 1
                        elif r.status >= 300:
                            counts["errors"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1

            duration = args.minutes * 60
            tick = 0.1
            per_tick = args.rate * tick
            per_call = max(1, round(per_tick / args.calls_per_tick))
            t0 = time.monotonic()
            next_sample = t0
            next_disc = t0 + args.disconnect_s
            next_restart = t0 + args.restart_s
            pending: set[asyncio.Task] = set()
            k = 0
            seq = 0
            while True:
                now = time.monotonic()
                if now - t0 >= duration:
                    break
                if now >= next_sample:
                    s = proc_sample(proc.pid)
                    s["t"] = now - t0
                    s["queue"] = await queue_depth(session, base)
                    samples.append(s)
                    next_sample += args.sample_s
                    warm_s = max(15.0, args.warmup_frac * duration)
                    if args.tracemalloc and not traced_at and now - t0 >= warm_s:
                        traced_at.append(now - t0)
                        proc.send_signal(signal.SIGUSR2)  # tracing starts
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {proc.returncode}; see {log_path}")
                k += 1
                sent_target = int(args.rate * (now - t0))
                while counts["messages"] < sent_target:
                    tid = rng.choice(tids)
                    seq += 1
                    body = {
                        "action": "message",
                        "chat": f"1555{rng.randrange(args.chats):07d}",
                        "text": f"soak message {seq} " + "x" * rng.randint(20, 300),
                        "count": per_call,
                    }
                    counts["messages"] += per_call
                    counts["simulate"] += 1
                    task = asyncio.create_task(post(f"/v1/tenants/{tid}/simulate", body))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if now >= next_disc:
                    next_disc += args.disconnect_s
                    for tid in rng.sample(tids, min(args.disconnect_n, len(tids))):
                        counts["disconnects"] += 1
                        await post(f"/v1/tenants/{tid}/simulate", {"action": "disconnect"})
                if now >= next_restart:
                    next_restart += args.restart_s
                    counts["restarts"] += 1
                    await post(f"/v1/tenants/{rng.choice(tids)}/restart", None)
                if len(pending) > 200:  # the daemon is behind: do not pile up requests
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                await asyncio.sleep(max(0.0, t0 + k * tick - time.monotonic()))
            if pending:
                await asyncio.wait(pending, timeout=60)
            elapsed = time.monotonic() - t0
            s = proc_sample(proc.pid)
            s["t"] = elapsed
            samples.append(s)
            if traced_at:
                proc.send_signal(signal.SIGUSR2)  # what was allocated since and lives
                deadline = time.monotonic() + 120
                # the child writes the file: nothing to wait on but the file system
                while not trace_out.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
                out["tracemalloc"] = (
                    trace_out.read_text() if trace_out.exists() else "no snapshot written"
                )
                out["tracemalloc_span_s"] = elapsed - traced_at[0]
            async with session.get(f"{rx_base}/stats") as r:
                out["deliveries"] = (await r.json())["count"]
            final_states = await states(session, base)
            out["connected_at_end"] = final_states.count("connected")
            async with session.get(f"{base}/readyz") as r:
                out["readyz_at_end"] = r.status
        out["elapsed_s"] = elapsed
        proc.send_signal(signal.SIGTERM)
        out["exit_code"] = await asyncio.to_thread(proc.wait, 60)
        failed = False
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        log.close()
        rx.terminate()
        await rx.wait()
        if failed:
            last = samples[-1] if samples else None
            print(f"FAILED after {len(samples)} samples (last {last}); kept {root}")
            tail = log_path.read_bytes()[-4000:].decode(errors="replace")
            print(f"daemon log, last lines:\n{tail}")
        elif args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    out.update(counts)
    out["offered_msgs_s"] = counts["messages"] / elapsed
    warm = max(15.0, args.warmup_frac * elapsed)
    after = [s for s in samples if s["t"] >= warm]
    out["warmup_s"] = warm
    out["samples"] = len(samples)
    out["samples_after_warmup"] = len(after)
    xs = [s["t"] / 60 for s in after]
    for key in ("rss_kb", "anon_kb", "fds", "threads"):
        ys = [s[key] for s in after]
        out[f"{key}_first"] = samples[0][key]
        out[f"{key}_warm"] = after[0][key] if after else None
        out[f"{key}_last"] = samples[-1][key]
        out[f"{key}_max"] = max(s[key] for s in samples)
        out[f"{key}_mean_after_warmup"] = sum(ys) / len(ys) if ys else float("nan")
        out[f"{key}_slope_per_min"] = slope(xs, ys)
    queues = [s.get("queue", 0) for s in after]
    out["queue_max_after_warmup"] = max(queues) if queues else None
    out["queue_last"] = samples[-2].get("queue") if len(samples) > 1 else None
    rss_level = out["rss_kb_mean_after_warmup"]
    fd_level = out["fds_mean_after_warmup"]
    out["rss_limit_kb_per_min"] = 0.01 * rss_level / 10
    out["fds_limit_per_min"] = max(2.0, 0.01 * fd_level) / 10
    out["rss_flat"] = abs(out["rss_kb_slope_per_min"]) <= out["rss_limit_kb_per_min"]
    out["fds_flat"] = abs(out["fds_slope_per_min"]) <= out["fds_limit_per_min"]
    out["rss_24h_projection_mib"] = out["rss_kb_slope_per_min"] * 1440 / 1024
    out["series"] = samples
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="run length (10)")
    ap.add_argument("--tenants", type=int, default=50, help="simulator tenants (50)")
    ap.add_argument("--rate", type=int, default=300, help="offered messages/s (300)")
    ap.add_argument("--chats", type=int, default=200, help="chats per tenant (200)")
    ap.add_argument("--calls-per-tick", type=int, default=3, help="simulate calls per 100 ms")
    ap.add_argument("--disconnect-s", type=float, default=5.0, help="disconnect period (5)")
    ap.add_argument("--disconnect-n", type=int, default=3, help="tenants per disconnect (3)")
    ap.add_argument("--restart-s", type=float, default=30.0, help="restart period (30)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS/fd sampling period (5)")
    ap.add_argument("--warmup-frac", type=float, default=0.2, help="warm-up share (0.2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the data directory and log")
    ap.add_argument("--log-level", default="INFO", help="the daemon's log level (INFO)")
    ap.add_argument("--quick", action="store_true", help="1 minute, 2 s samples")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument(
        "--sqlite-cache-kib",
        type=int,
        default=None,
        metavar="KIB",
        help="set every SQLite connection's page cache of the daemon to KIB (default: SQLite's)",
    )
    ap.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace the daemon's allocations (FRAMES deep) and print what grew after warm-up",
    )
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.sample_s = 1.0, 2.0
    print(
        f"soak: {args.minutes:g} min, {args.tenants} simulator tenants, {args.rate} msg/s, "
        f"{args.disconnect_n} disconnects every {args.disconnect_s:g} s, a restart every "
        f"{args.restart_s:g} s, samples every {args.sample_s:g} s",
        flush=True,
    )
    r = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    ok = lambda b: "ok" if b else "MISSED"  # noqa: E731
    print(
        f"load: {r['messages']} messages offered ({r['offered_msgs_s']:.0f}/s) in "
        f"{r['simulate']} simulate calls, {r['disconnects']} disconnects, {r['restarts']} "
        f"restarts; {r['not_connected']} answered 409 not_connected, {r['errors']} errors; "
        f"{r['deliveries']} webhook deliveries"
    )
    print(
        f"end: {r['connected_at_end']}/{r['tenants']} connected, /readyz {r['readyz_at_end']}, "
        f"exit code {r['exit_code']}"
    )
    print(f"samples: {r['samples']} ({r['samples_after_warmup']} after {r['warmup_s']:.0f} s)")
    print(
        f"RSS: first {r['rss_kb_first'] / 1024:.1f} MiB, after warm-up "
        f"{r['rss_kb_warm'] / 1024:.1f} MiB, last {r['rss_kb_last'] / 1024:.1f} MiB, max "
        f"{r['rss_kb_max'] / 1024:.1f} MiB; slope {r['rss_kb_slope_per_min']:+.1f} KB/min "
        f"(limit +-{r['rss_limit_kb_per_min']:.0f}) {ok(r['rss_flat'])}; 24 h projection "
        f"{r['rss_24h_projection_mib']:+.0f} MiB"
    )
    print(
        f"fds: first {r['fds_first']}, after warm-up {r['fds_warm']}, last {r['fds_last']}, "
        f"max {r['fds_max']}; slope {r['fds_slope_per_min']:+.2f}/min "
        f"(limit +-{r['fds_limit_per_min']:.2f}) {ok(r['fds_flat'])}"
    )
    print(
        f"threads: first {r['threads_first']}, last {r['threads_last']}, max "
        f"{r['threads_max']}; slope {r['threads_slope_per_min']:+.2f}/min"
    )
    print(
        f"anonymous memory: after warm-up {r['anon_kb_warm'] / 1024:.1f} MiB, last "
        f"{r['anon_kb_last'] / 1024:.1f} MiB; slope {r['anon_kb_slope_per_min']:+.1f} KB/min"
    )
    print(
        f"writer queue: max {r['queue_max_after_warmup']} events after warm-up, last"
        f" {r['queue_last']} (a backlog: the daemon fell behind the offered load, and RSS then"
        " measures the backlog)"
        if r["queue_max_after_warmup"] and r["queue_max_after_warmup"] > 10_000
        else f"writer queue: max {r['queue_max_after_warmup']} events after warm-up (kept up)"
    )
    if "tracemalloc" in r:
        span_min = r["tracemalloc_span_s"] / 60
        print(f"tracemalloc, growth over the last {span_min:.1f} min:\n{r['tracemalloc']}")
    return 0 if r["rss_flat"] and r["fds_flat"] and r["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
