"""LID map benchmark: what filling `sender_alt`/`chat_alt` at storage time and backfilling a
learned mapping cost the writer.

    .venv/bin/python bench/lid_map.py            # 100k messages, 3 alternating rounds
    .venv/bin/python bench/lid_map.py --quick    # smoke run

Figures, as ratios measured in the same process (the machine is shared and noisy):

1. fill: Writer throughput for N messages (50 tenants, 1,000 senders, half of them addressed by
   LID) with a populated LID map (every sender mapped) vs an empty one (fill_alts returns at
   once). Target: >= 0.8 x the empty-map rate.
2. backfill: one learned mapping that updates K LID-addressed messages inside a table of N
   messages, through the writer, vs storing one plain message: the partial indexes make it
   proportional to K, not N. Target: under 50 ms for K = 1,000 in N = 100,000.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
import statistics
import tempfile
import time

from loguru import logger

from oxyd.clock import RealClock
from oxyd.model import IdentityLearned, Message
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.store.writer import Writer

TENANTS = 50
SENDERS = 1_000


def lid(i: int) -> str:
    return f"{10**14 + i}@lid"


def phone(i: int) -> str:
    return f"1555{i:07d}@s.whatsapp.net"


def messages(n: int, seed: int) -> list[tuple[str, Message]]:
    out = []
    for k in range(n):
        s = (k // 100) % SENDERS  # a sender's messages come in runs, as a busy chat's do
        jid = lid(s) if s % 2 else phone(s)
        out.append(
            (
                f"t{s % TENANTS}",
                Message(f"M{seed}-{k}", jid, jid, False, 1_700_000_000_000 + k, text="x" * 80),
            )
        )
    return out


async def run_writer(store: Store, items: list, clock: RealClock) -> float:
    """Through Writer.offer in runs of up to 200 per tenant, as the runners hand them over."""
    runs: list[tuple[str, list[Message]]] = []
    for tenant, msg in items:
        if runs and runs[-1][0] == tenant and len(runs[-1][1]) < 200:
            runs[-1][1].append(msg)
        else:
            runs.append((tenant, [msg]))
    writer = Writer(store, clock, outbox.Subscriptions())
    writer.start()
    started = time.perf_counter()
    for tenant, run in runs:
        while run:
            taken = writer.offer(tenant, run)
            run = run[taken:]
            if run:
                await writer.wait_room()
    await writer.flush()
    elapsed = time.perf_counter() - started
    await writer.stop()
    return len(items) / elapsed


async def fill_round(tmp: Path, n: int, mapped: bool, seed: int) -> float:
    d = tmp / f"fill-{seed}-{mapped}"
    d.mkdir()
    store = await Store.open(d)
    try:
        if mapped:
            async with store.tx() as db:
                await db.executemany(
                    "INSERT INTO lid_map (tenant, lid, phone, learned_at_ms) VALUES (?,?,?,0)",
                    [(f"t{s % TENANTS}", lid(s), phone(s)) for s in range(SENDERS)],
                )
        return await run_writer(store, messages(n, seed), RealClock())
    finally:
        await store.close()


async def backfill(tmp: Path, n: int, k: int) -> tuple[float, float]:
    d = tmp / "backfill"
    d.mkdir()
    store = await Store.open(d)
    clock = RealClock()
    try:
        # n messages of tenant t0: k of them from one LID still missing its phone
        items = []
        for i in range(n):
            jid = lid(0) if i < k else phone(1 + i % 999)
            items.append(("t0", Message(f"B{i}", jid, jid, False, 1_700_000_000_000 + i)))
        await run_writer(store, items, clock)
        writer = Writer(store, clock, outbox.Subscriptions())
        writer.start()
        started = time.perf_counter()
        await writer.put("t0", Message("P1", phone(5000), phone(5000), False, 1))
        await writer.flush()
        plain_s = time.perf_counter() - started
        started = time.perf_counter()
        await writer.put("t0", IdentityLearned(lid(0), phone(0)))
        await writer.flush()
        learned_s = time.perf_counter() - started
        await writer.stop()
        async with store.ro.execute(
            "SELECT count(*) FROM messages WHERE sender_alt = ?", (phone(0),)
        ) as cur:
            assert (await cur.fetchone())[0] == k
        return plain_s, learned_s
    finally:
        await store.close()


async def main(args: argparse.Namespace) -> dict:
    logger.remove()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_s:
        tmp = Path(tmp_s)
        empty, mapped = [], []
        for r in range(args.rounds):
            empty.append(await fill_round(tmp, args.n, False, r))
            mapped.append(await fill_round(tmp, args.n, True, r))
        plain_s, learned_s = await backfill(tmp, args.n, args.k)
    fig = {
        "fill_empty_msg_s": round(statistics.median(empty)),
        "fill_mapped_msg_s": round(statistics.median(mapped)),
        "fill_ratio": round(statistics.median(mapped) / statistics.median(empty), 3),
        "backfill_k": args.k,
        "backfill_n": args.n,
        "backfill_ms": round(learned_s * 1000, 1),
        "plain_message_ms": round(plain_s * 1000, 1),
    }
    print(
        f"fill: {fig['fill_mapped_msg_s']:,} msg/s with a populated LID map vs"
        f" {fig['fill_empty_msg_s']:,} empty = {fig['fill_ratio']} x (target >= 0.8)\n"
        f"backfill: one mapping updating {args.k:,} of {args.n:,} messages took"
        f" {fig['backfill_ms']} ms (one plain message: {fig['plain_message_ms']} ms;"
        " target < 50 ms)"
    )
    return fig


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="messages (default 100000)")
    ap.add_argument("--k", type=int, default=1_000, help="messages a mapping backfills")
    ap.add_argument("--rounds", type=int, default=3, help="alternating empty/mapped rounds")
    ap.add_argument("--tmp", default=None, help="directory for the databases")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10k messages, 1 round")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args()
    if a.quick:
        a.n, a.rounds, a.k = 10_000, 1, 500
    figures = asyncio.run(main(a))
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2))
