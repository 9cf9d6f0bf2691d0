"""Ingest benchmark: the store writer vs raw sqlite3.executemany, latency, and the whole path.

    .venv/bin/python bench/ingest.py            # default: 200k rows, 10 s latency run
    .venv/bin/python bench/ingest.py --quick    # smoke run, a few seconds

Three figures, each as a ratio against a baseline measured in the same process (the machine
is shared and noisy, so absolute rates vary between runs; ratios much less):

1. throughput: N realistic message rows (text 20-400 chars, raw 200-600 bytes, ~1,000 chats,
   50 tenants) through Writer.put + flush vs plain sqlite3.executemany of the SAME rows (built
   by batch.message_row, inserted with batch.INSERT_MESSAGE) into the SAME schema in
   1,000-row transactions. WAL + synchronous=NORMAL on both. Target: writer >= 0.7 x raw.
2. latency: enqueue -> commit at a steady offered load (default 5,000 msg/s, paced on the
   event loop in 10 ms ticks). Target: p99 <= 50 ms.
3. whole path: simulator events -> supervisor -> writer -> commit, 50 simulator tenants, vs
   raw executemany of the very rows that path stored. Target: >= 0.5 x raw.
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
import gc
import json
import random
import sqlite3
import statistics
import tempfile
import time

from loguru import logger

from oxyd.clock import RealClock
from oxyd.model import Message, State
from oxyd.store import outbox
from oxyd.store.batch import INSERT_MESSAGE, message_row
from oxyd.store.db import DB_NAME, Store
from oxyd.store.writer import Writer

TENANTS = 50
CHATS = 1_000  # in all: 20 per tenant
TX_ROWS = 1_000

_INSERT_COLS = (
    "tenant, chat, sender, wa_id, from_me, sent_at_ms, kind, text, push_name, chat_alt,"
    " sender_alt, ref_id, media, raw, status, from_history, stored_at_ms"
)


# ---- data ----


def make_messages(n: int, seed: int = 7) -> list[tuple[str, Message]]:
    """n (tenant, Message) pairs with realistic sizes, spread over 50 tenants / 1,000 chats."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,!?"
    corpus = "".join(rng.choice(alphabet) for _ in range(64_000))
    blobs = rng.randbytes(64_000)
    tenants = [f"t{i:02d}" for i in range(TENANTS)]
    per_tenant = CHATS // TENANTS
    now = int(time.time() * 1000) - n
    out = []
    for i in range(n):
        tenant = tenants[i % TENANTS]
        c = rng.randrange(per_tenant)
        group = c % 5 == 0
        chat = (
            f"1203630{i % TENANTS:02d}{c:04d}@g.us"
            if group
            else f"1555{i % TENANTS:02d}{c:05d}@s.whatsapp.net"
        )
        sender = f"1555{rng.randrange(10**7):07d}@s.whatsapp.net" if group else chat
        tlen = rng.randint(20, 400)
        toff = rng.randrange(len(corpus) - tlen)
        rlen = rng.randint(200, 600)
        roff = rng.randrange(len(blobs) - rlen)
        out.append(
            (
                tenant,
                Message(
                    wa_id=f"3EB0{i:016X}",
                    chat=chat,
                    sender=sender,
                    from_me=i % 7 == 0,
                    sent_at_ms=now + i,
                    text=corpus[toff : toff + tlen],
                    push_name=f"Contact {c}",
                    raw=blobs[roff : roff + rlen],
                    is_group=group,
                ),
            )
        )
    return out


# ---- raw baseline ----


async def fresh_db(dirpath: Path) -> Path:
    """A database with oxyd's schema (Store.open migrates it), closed again."""
    await asyncio.to_thread(dirpath.mkdir, parents=True, exist_ok=True)
    store = await Store.open(dirpath)
    await store.close()
    return dirpath / DB_NAME


def raw_insert(path: Path, rows: list[tuple]) -> float:
    """Seconds to insert `rows` with plain sqlite3, 1,000-row transactions."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    t0 = time.perf_counter()
    for i in range(0, len(rows), TX_ROWS):
        con.execute("BEGIN IMMEDIATE")
        con.executemany(INSERT_MESSAGE, rows[i : i + TX_ROWS])
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    (count,) = con.execute("SELECT count(*) FROM messages").fetchone()
    con.close()
    assert count == len(rows), (count, len(rows))
    return dt


# ---- writer ----


async def open_writer(dirpath: Path, **kw) -> tuple[Store, Writer]:
    await asyncio.to_thread(dirpath.mkdir, parents=True, exist_ok=True)
    store = await Store.open(dirpath)
    writer = Writer(store, RealClock(), outbox.Subscriptions(None), **kw)
    writer.start()
    return store, writer


async def writer_insert(dirpath: Path, msgs: list[tuple[str, Message]]) -> float:
    store, writer = await open_writer(dirpath, batch_max=1000, queue_max=100_000)
    try:
        t0 = time.perf_counter()
        for tenant, m in msgs:
            await writer.put(tenant, m)
        await writer.flush()
        dt = time.perf_counter() - t0
        assert writer.stats.stored == len(msgs), (writer.stats.stored, len(msgs))
        return dt
    finally:
        await writer.stop()
        await store.close()


async def latency_run(dirpath: Path, msgs, rate: int, seconds: float) -> dict:
    """Offer `rate` msg/s in 10 ms ticks for `seconds`; enqueue->commit latencies."""
    store, writer = await open_writer(dirpath, batch_max=1000, queue_max=100_000)
    loop = asyncio.get_running_loop()
    writer.stats.latencies_s = []
    tick = 0.01
    total = int(rate * seconds)
    sent = 0
    max_depth = 0
    try:
        t0 = loop.time()
        k = 0
        while sent < total:
            k += 1
            due = min(total, int(rate * k * tick))  # catch up if a tick was late
            while sent < due:
                tenant, m = msgs[sent % len(msgs)]
                if sent >= len(msgs):  # reuse rows under fresh ids
                    m = dataclasses.replace(m, wa_id=f"L{sent:019X}")
                await writer.put(tenant, m)
                sent += 1
            max_depth = max(max_depth, writer.depth)
            delay = t0 + k * tick - loop.time()
            await asyncio.sleep(max(0.0, delay))
        elapsed = loop.time() - t0
        await writer.flush()
        lat = sorted(writer.stats.latencies_s)
        return {
            "offered": total / elapsed,
            "n": len(lat),
            "p50": _pct(lat, 50),
            "p99": _pct(lat, 99),
            "max": lat[-1],
            "batches": writer.stats.batches,
            "max_depth": max_depth,
        }
    finally:
        await writer.stop()
        await store.close()


def _pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[i]


# ---- whole path ----


async def until(cond, timeout_s: float, what: str, poll_s: float = 0.005) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(poll_s)


async def whole_path(dirpath: Path, n: int) -> dict:
    from oxyd import app as oxyd_app
    from oxyd.config import load
    from oxyd.simulator.engine import SimulatorEngine

    await asyncio.to_thread(dirpath.mkdir, parents=True, exist_ok=True)
    cfg = load(env={"OXYD_DATA_DIR": str(dirpath), "OXYD_ADMIN_TOKEN": "bench"})
    clock = RealClock()
    engines = {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
    app = await oxyd_app.build(cfg, clock, engines=engines)
    await oxyd_app.start(app)
    try:
        tids = [f"w{i:02d}" for i in range(TENANTS)]
        for tid in tids:
            await app.supervisor.add(tid, "simulator")
        runners = app.supervisor.runners
        await until(
            lambda: all(runners[t].t.state is State.CONNECTED for t in tids),
            60,
            "50 simulator tenants connected",
        )
        await app.writer.flush()
        base = app.writer.stats.stored
        chats_per_tenant = CHATS // TENANTS
        calls = TENANTS * chats_per_tenant
        per_call = max(1, n // calls)
        total = per_call * calls
        text = "x" * 180  # the simulator appends " <i>"; ~185 chars, raw bytes = first 64
        t0 = time.perf_counter()
        for c in range(chats_per_tenant):
            for tid in tids:
                await app.supervisor.simulate(
                    tid,
                    {"action": "message", "chat": f"1555{c:07d}", "text": text, "count": per_call},
                )
            await asyncio.sleep(0)  # let runners and the writer interleave with the driver
        await until(lambda: app.writer.stats.stored - base >= total, 600, "every message committed")
        dt = time.perf_counter() - t0
        return {"n": total, "seconds": dt, "db": dirpath / DB_NAME}
    finally:
        await oxyd_app.stop(app)


def stored_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    rows = con.execute(f"SELECT {_INSERT_COLS} FROM messages ORDER BY id").fetchall()
    con.close()
    return rows


# ---- main ----


def _table(rows: list[tuple[str, str, str]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for j, r in enumerate(rows):
        lines.append(f"  {r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]}")
        if j == 0:
            lines.append("  " + "-" * (w[0] + w[1] + w[2] + 4))
    return "\n".join(lines)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="message rows (default 200000)")
    ap.add_argument("--rate", type=int, default=5_000, help="offered load for latency (msg/s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="latency run length")
    ap.add_argument("--whole-n", type=int, default=None, help="messages for the whole path")
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw/writer rounds")
    ap.add_argument("--tmp", default=None, help="directory for the databases (default: $TMPDIR)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k rows, 2 s, 1 round")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.n, args.seconds, args.rounds = 20_000, 2.0, 1
    whole_n = args.whole_n or max(1_000, args.n // 2)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    print(f"generating {args.n} messages ({TENANTS} tenants, {CHATS} chats)...", flush=True)
    msgs = make_messages(args.n)
    now_ms = int(time.time() * 1000)
    rows = [message_row(t, m, now_ms) for t, m in msgs]
    avg_text = statistics.fmean(len(m.text) for _, m in msgs)
    avg_raw = statistics.fmean(len(m.raw) for _, m in msgs)
    print(f"  avg text {avg_text:.0f} chars, avg raw {avg_raw:.0f} bytes", flush=True)

    with tempfile.TemporaryDirectory(prefix="oxyd-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        raw_s, writer_s = [], []
        for r in range(args.rounds):
            # Alternate so drift on a shared machine hits both sides alike; the ratio is
            # taken per round (paired), then the median over rounds.
            path = await fresh_db(root / f"raw{r}")
            raw_s.append(await asyncio.to_thread(raw_insert, path, rows))
            gc.collect()
            writer_s.append(await writer_insert(root / f"writer{r}", msgs))
            gc.collect()
            print(
                f"  round {r + 1}: raw {args.n / raw_s[-1]:,.0f}/s, writer"
                f" {args.n / writer_s[-1]:,.0f}/s, ratio {raw_s[-1] / writer_s[-1]:.2f}",
                flush=True,
            )
        raw_rate = args.n / statistics.median(raw_s)
        writer_rate = args.n / statistics.median(writer_s)
        ratios = [rs / ws for rs, ws in zip(raw_s, writer_s, strict=True)]

        print(f"latency run: {args.rate} msg/s for {args.seconds:g} s...", flush=True)
        lat = await latency_run(root / "latency", msgs, args.rate, args.seconds)

        print(f"whole path: {whole_n} messages through 50 simulator tenants...", flush=True)
        wp = await whole_path(root / "whole", whole_n)
        wp_rows = stored_rows(wp["db"])
        assert len(wp_rows) == wp["n"], (len(wp_rows), wp["n"])
        wp_raw_s = await asyncio.to_thread(raw_insert, await fresh_db(root / "wraw"), wp_rows)
        wp_rate = wp["n"] / wp["seconds"]
        wp_raw_rate = wp["n"] / wp_raw_s

    ratio = statistics.median(ratios)
    wp_ratio = wp_rate / wp_raw_rate
    if args.json:
        figures = {
            "n": args.n,
            "rounds": args.rounds,
            "raw_rows_s": raw_rate,
            "writer_rows_s": writer_rate,
            "writer_ratio": ratio,
            "writer_ratios": ratios,
            "latency_rate": args.rate,
            "latency_offered": lat["offered"],
            "latency_n": lat["n"],
            "latency_p50_ms": lat["p50"] * 1000,
            "latency_p99_ms": lat["p99"] * 1000,
            "latency_max_ms": lat["max"] * 1000,
            "latency_batches": lat["batches"],
            "latency_max_depth": lat["max_depth"],
            "whole_n": wp["n"],
            "whole_msgs_s": wp_rate,
            "whole_raw_rows_s": wp_raw_rate,
            "whole_ratio": wp_ratio,
        }
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(figures, indent=1))
    ok = lambda b: "ok" if b else "MISSED"  # noqa: E731
    print()
    print(f"oxyd ingest benchmark (n={args.n}, median of {args.rounds} alternating rounds)")
    print(
        _table(
            [
                ("figure", "value", "target"),
                ("raw executemany (rows prebuilt)", f"{raw_rate:,.0f} rows/s", "baseline"),
                ("writer put+flush", f"{writer_rate:,.0f} rows/s", ""),
                (
                    "writer / raw (median of per-round ratios)",
                    f"{ratio:.2f}",
                    f">= 0.70 {ok(ratio >= 0.7)}",
                ),
                (
                    f"latency offered ({lat['n']} msgs)",
                    f"{lat['offered']:,.0f} msg/s",
                    f"{args.rate} msg/s",
                ),
                ("latency p50", f"{lat['p50'] * 1000:.1f} ms", ""),
                (
                    "latency p99",
                    f"{lat['p99'] * 1000:.1f} ms",
                    f"<= 50 ms {ok(lat['p99'] <= 0.05)}",
                ),
                ("latency max", f"{lat['max'] * 1000:.1f} ms", "(info)"),
                (
                    "latency batches / max depth",
                    f"{lat['batches']} / {lat['max_depth']}",
                    "(info)",
                ),
                ("whole path (sim->sup->writer)", f"{wp_rate:,.0f} msg/s", f"{wp['n']} msgs"),
                ("raw executemany, same rows", f"{wp_raw_rate:,.0f} rows/s", "baseline"),
                ("whole path / raw", f"{wp_ratio:.2f}", f">= 0.50 {ok(wp_ratio >= 0.5)}"),
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
