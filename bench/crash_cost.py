"""What a crash costs: messages acknowledged but not yet committed when the daemon dies.

The real `oxyd run` with a simulator tenant ingests a steady stream (default 1,000 msg/s, sent
as `simulate message` requests of 10 every 10 ms). A message counts as acknowledged when its
request answered 202: from then on the simulated "server" has handed it to the client, exactly
as WhatsApp forgets a message once whatsmeow has acknowledged it. At a random moment after a
warm-up the daemon gets SIGKILL (or SIGTERM for the control run); the database is then read
directly and every acknowledged id that is not in it is lost.

    python bench/crash_cost.py                 # 5 SIGKILL trials and 2 SIGTERM trials
    python bench/crash_cost.py --rate 2000 --trials 10 --json crash.json

Traffic goes to 127.0.0.1 only. The machine may be shared and noisy: the loss scales with how
long a batch waits for the database thread, so read the figures as an order of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

TOKEN = "crash-cost-admin-token-0123456789"
TICK_S = 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait(cond, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError("daemon did not get ready")
        await asyncio.sleep(0.05)


async def trial(rate: int, sig: signal.Signals, warm_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="oxyd-crash-") as tmp:
        data = Path(tmp) / "data"
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OXYD_")}
        env.update(
            OXYD_DATA_DIR=str(data),
            OXYD_HTTP_PORT=str(port),
            OXYD_ADMIN_TOKEN=TOKEN,
            OXYD_LOG_LEVEL="WARNING",
        )
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "oxyd", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with aiohttp.ClientSession(headers=headers) as http:

                async def healthy() -> bool:
                    try:
                        async with http.get(f"{base}/healthz") as r:
                            return r.status == 200
                    except aiohttp.ClientError:
                        return False

                await _wait(healthy, 30)
                await http.post(f"{base}/v1/tenants", json={"id": "t", "engine": "simulator"})

                async def connected() -> bool:
                    async with http.get(f"{base}/v1/tenants/t") as r:
                        return (await r.json()).get("state") == "connected"

                await _wait(connected, 30)
                acked: list[str] = []
                per_tick = max(1, round(rate * TICK_S))
                body = {"action": "message", "chat": "15551234567", "text": "m", "count": per_tick}
                killed = False

                async def send() -> None:
                    try:
                        async with http.post(f"{base}/v1/tenants/t/simulate", json=body) as r:
                            answer = await r.json()
                            if r.status == 202 and not killed:
                                acked.extend(answer["ids"])
                    except (aiohttp.ClientError, ValueError):
                        pass  # in flight at the kill: never acknowledged

                tasks: set[asyncio.Task] = set()
                start = time.monotonic()
                stop_at = start + warm_s + random.random()
                n = 0
                while time.monotonic() < stop_at:
                    t = asyncio.create_task(send())
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    n += 1
                    await asyncio.sleep(max(0.0, start + n * TICK_S - time.monotonic()))
                offered_rate = len(acked) / (time.monotonic() - start)
                proc.send_signal(sig)
                killed = True
                await asyncio.to_thread(proc.wait, 60)
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        con = sqlite3.connect(data / "oxyd.sqlite3")
        stored = {r[0] for r in con.execute("SELECT wa_id FROM messages")}
        con.close()
        lost = sum(1 for i in acked if i not in stored)
        return {
            "signal": sig.name,
            "acked": len(acked),
            "rate_per_s": round(offered_rate),
            "lost": lost,
            "lost_ms": round(lost / offered_rate * 1000, 1) if offered_rate else None,
        }


async def run_trials(args: argparse.Namespace) -> list[dict]:
    runs = []
    for _ in range(args.trials):
        runs.append(await trial(args.rate, signal.SIGKILL, args.warm_s))
    for _ in range(args.term_trials):
        runs.append(await trial(args.rate, signal.SIGTERM, args.warm_s))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=1000, help="messages per second offered")
    p.add_argument("--trials", type=int, default=5, help="SIGKILL trials")
    p.add_argument("--term-trials", type=int, default=2, help="SIGTERM control trials")
    p.add_argument("--warm-s", type=float, default=3.0, help="ingest this long before the kill")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 + 1 trials, 1.5 s warm-up")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args()
    if args.quick:
        args.trials, args.term_trials, args.warm_s = 2, 1, 1.5
    runs = asyncio.run(run_trials(args))
    kills = [r for r in runs if r["signal"] == "SIGKILL"]
    terms = [r for r in runs if r["signal"] == "SIGTERM"]
    summary = {
        "rate_per_s": args.rate,
        "sigkill_lost_median": statistics.median(r["lost"] for r in kills) if kills else None,
        "sigkill_lost_max": max((r["lost"] for r in kills), default=None),
        "sigkill_lost_ms_median": (
            statistics.median(r["lost_ms"] for r in kills) if kills else None
        ),
        "sigterm_lost_max": max((r["lost"] for r in terms), default=None),
        "runs": runs,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    for r in runs:
        print(
            f"{r['signal']:8} acked {r['acked']:6} at {r['rate_per_s']:5}/s"
            f"  lost {r['lost']:4} ({r['lost_ms']} ms of traffic)"
        )
    print(
        f"SIGKILL at {args.rate} msg/s: median {summary['sigkill_lost_median']} lost"
        f" (~{summary['sigkill_lost_ms_median']} ms of traffic),"
        f" worst {summary['sigkill_lost_max']}; SIGTERM: worst {summary['sigterm_lost_max']} lost"
    )


if __name__ == "__main__":
    main()
