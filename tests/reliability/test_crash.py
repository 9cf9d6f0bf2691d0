"""Crash: SIGKILL the real `oxyd run` at random moments during ingest, restart, check.

Simulator tenants ingest a few thousand messages per second (`simulate message` with a count,
plus redeliveries of fixed WhatsApp ids) while each has a webhook to a real receiver in this
process, so the outbox is busy. At a random moment the process is SIGKILLed. Read with sqlite3
after it is dead, the database must hold every message committed before (exactly once), the
outbox a `message.received` row for every stored message (same transaction), and the per-tenant
counters must match. After each restart every tenant is back in its pre-crash state. At the end a
clean run drains the outbox: the receiver has seen every stored message, and nothing else.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from reliakit import LONG, SECRET, Daemon, Receiver, read_db, scale, until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scale(170, 1500))]

ACTIVE = ["c0", "c1", "c2", "c3"]
PARKED = {"p-conflict": "replace", "p-logout": "logout"}
STOPPED = "halt"
EXPECTED = {
    **dict.fromkeys(ACTIVE, "connected"),
    "p-conflict": "conflict",
    "p-logout": "logged_out",
    STOPPED: "stopped",
}
KILLS = scale(3, 20)
RATE = 3000  # messages per second offered, all drivers together
DRIVERS = 3
BATCH = 100  # messages per simulate request
REDELIVERED = [f"RID{i:03d}" for i in range(24)]  # fixed WhatsApp ids, sent again and again
REDELIVERY_CHAT = "15559990000"

KEY_SQL = "SELECT tenant, chat, sender, wa_id FROM messages"


async def _drive(d: Daemon, rng: random.Random, round_no: int, sent: list[int]) -> None:
    """Offer RATE/DRIVERS msg/s until cancelled (or the daemon is gone)."""
    per_s = RATE / DRIVERS
    start = time.monotonic()
    n = 0
    while True:
        tid = rng.choice(ACTIVE)
        if rng.random() < 0.2:
            rid = rng.choice(REDELIVERED)
            body = {"action": "message", "chat": REDELIVERY_CHAT, "text": "again", "id": rid}
            k = 1
        else:
            chat = f"1555{round_no:03d}{rng.randrange(50):04d}"
            body = {"action": "message", "chat": chat, "text": "load", "count": BATCH}
            k = BATCH
        code, _ = await d.call("POST", f"/v1/tenants/{tid}/simulate", body)
        if code == 202:
            n += k
            sent[0] += k
        elif code == 0:
            await asyncio.sleep(0.01)  # the daemon is gone (killed): wait to be cancelled
            continue
        delay = start + n / per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _check_dead_db(db, committed_before: set[tuple]) -> set[tuple]:
    """Invariants of the database of a killed process. Returns the stored message keys."""
    dupes = read_db(
        db,
        "SELECT tenant, chat, sender, wa_id, count(*) FROM messages"
        " GROUP BY 1, 2, 3, 4 HAVING count(*) > 1 LIMIT 5",
    )
    assert not dupes, f"messages stored more than once: {dupes}"
    keys = set(read_db(db, KEY_SQL))
    total = read_db(db, "SELECT count(*) FROM messages")[0][0]
    assert total == len(keys)
    lost = committed_before - keys
    assert not lost, f"{len(lost)} committed messages lost, e.g. {sorted(lost)[:3]}"
    # Counters, chats and outbox rows are committed in the message's transaction.
    counts = dict(read_db(db, "SELECT tenant, messages_stored FROM tenant_counts"))
    actual = dict(read_db(db, "SELECT tenant, count(*) FROM messages GROUP BY tenant"))
    assert counts == actual, (counts, actual)
    chat_counts = dict(
        ((t, c), n) for t, c, n in read_db(db, "SELECT tenant, jid, message_count FROM chats")
    )
    for t, c, n in read_db(db, "SELECT tenant, chat, count(*) FROM messages GROUP BY 1, 2"):
        assert chat_counts.get((t, c)) == n, (t, c, n, chat_counts.get((t, c)))
    events = read_db(
        db,
        "SELECT tenant, json_extract(body, '$.data.chat'), json_extract(body, '$.data.sender'),"
        " json_extract(body, '$.data.id') FROM outbox WHERE type = 'message.received'",
    )
    assert len(events) == len(set(events)), "a message has two message.received rows"
    received = set(
        read_db(
            db,
            KEY_SQL + " WHERE from_me = 0 AND from_history = 0 AND tenant IN (?,?,?,?)",
            tuple(ACTIVE),
        )
    )
    assert set(events) == received, (
        f"outbox and messages disagree: {len(received - set(events))} messages without an"
        f" event, {len(set(events) - received)} events without a message"
    )
    return keys


async def _wait_states(d: Daemon, timeout_s: float = 30.0) -> None:
    async def back() -> bool:
        return await d.states() == EXPECTED

    try:
        await until(back, timeout_s, "every tenant in its pre-crash state", step_s=0.05)
    except AssertionError:
        raise AssertionError(f"states {await d.states()} != {EXPECTED}") from None


async def test_sigkill_during_ingest_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(0xC0FFEE if not LONG else None)
    data = tmp_path / "data"
    receiver = await Receiver().start()
    d = Daemon(data, OXYD_SUPERVISOR_STOP_GRACE_S="2", OXYD_WEBHOOKS_TIMEOUT_S="5")
    db = data / "oxyd.sqlite3"
    figures: list[str] = []
    try:
        await d.start()
        for tid in [*ACTIVE, *PARKED, STOPPED]:
            code, body = await d.call("POST", "/v1/tenants", {"id": tid, "engine": "simulator"})
            assert code == 201, body
        for tid in ACTIVE:
            code, body = await d.call(
                "PUT", f"/v1/tenants/{tid}/webhook", {"url": receiver.url(tid), "secret": SECRET}
            )
            assert code == 200, body
        await until(lambda: _all_connected(d), 20, "tenants connected", step_s=0.05)
        for tid, action in PARKED.items():
            code, body = await d.call("POST", f"/v1/tenants/{tid}/simulate", {"action": action})
            assert code == 202, body
        assert (await d.call("POST", f"/v1/tenants/{STOPPED}/stop"))[0] == 202
        await _wait_states(d)

        committed: set[tuple] = set()
        for round_no in range(KILLS):
            sent = [0]
            drivers = [
                asyncio.create_task(_drive(d, random.Random(rng.random()), round_no, sent))
                for _ in range(DRIVERS)
            ]
            window = rng.uniform(0.3, 2.0)
            started = time.monotonic()
            await asyncio.sleep(window)  # a random moment during ingest (not a condition wait)
            d.kill()
            elapsed = time.monotonic() - started
            for t in drivers:
                t.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
            before = len(committed)
            committed = await asyncio.to_thread(_check_dead_db, db, committed)
            figures.append(
                f"kill {round_no + 1}: after {elapsed:.2f}s, {sent[0]} offered,"
                f" {len(committed) - before} committed ({(len(committed) - before) / elapsed:.0f}"
                " msg/s)"
            )
            await d.start()
            await _wait_states(d)
            # Counters restored from the database match it.
            tenants = await d.tenants()
            stored = dict(read_db(db, "SELECT tenant, count(*) FROM messages GROUP BY tenant"))
            for tid in ACTIVE:
                assert tenants[tid]["messages_stored"] == stored.get(tid, 0), tid

        # Every fixed id once more, after all those crashes: still stored once per tenant.
        for tid in ACTIVE:
            for rid in REDELIVERED:
                body = {"action": "message", "chat": REDELIVERY_CHAT, "text": "x", "id": rid}
                assert (await d.call("POST", f"/v1/tenants/{tid}/simulate", body))[0] == 202
        # The final clean run: the outbox completes.
        t0 = time.monotonic()

        def pending() -> int:
            return read_db(db, "SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0]

        async def drained() -> bool:
            return await asyncio.to_thread(pending) == 0

        await until(drained, scale(90, 600), "webhook outbox drained", step_s=0.2)
        figures.append(f"outbox drained in {time.monotonic() - t0:.1f}s after the last restart")
        assert await d.term() == 0, d.log_text()
        keys = await asyncio.to_thread(_check_dead_db, db, committed)
        dead = read_db(db, "SELECT count(*), min(last_error) FROM outbox WHERE status = 'dead'")
        assert dead[0][0] == 0, f"dead webhook events: {dead}"
        rid_rows = read_db(
            db, "SELECT tenant, wa_id, count(*) FROM messages WHERE wa_id LIKE 'RID%' GROUP BY 1, 2"
        )
        assert rid_rows and all(n == 1 for _, _, n in rid_rows), rid_rows
        assert len(rid_rows) == len(ACTIVE) * len(REDELIVERED)

        seen = {
            (e["tenant"], e["data"]["chat"], e["data"]["sender"], e["data"]["id"])
            for e in receiver.events
            if e["type"] == "message.received"
        }
        in_db = set(
            read_db(
                db,
                KEY_SQL + " WHERE from_me = 0 AND from_history = 0 AND tenant IN (?,?,?,?)",
                tuple(ACTIVE),
            )
        )
        missing = in_db - seen
        phantom = seen - in_db
        assert not missing, (
            f"{len(missing)} stored messages never delivered, e.g. {list(missing)[:3]}"
        )
        assert not phantom, (
            f"{len(phantom)} delivered messages not stored, e.g. {list(phantom)[:3]}"
        )
        n_msg_events = sum(1 for e in receiver.events if e["type"] == "message.received")
        figures.append(
            f"{len(keys)} messages stored; {n_msg_events} message.received deliveries"
            f" ({n_msg_events - len(seen)} repeats after crashes)"
        )
    finally:
        print("\n".join(figures))
        await d.close()
        await receiver.stop()


async def _all_connected(d: Daemon) -> bool:
    states = await d.states()
    return len(states) == len(EXPECTED) and set(states.values()) == {"connected"}
