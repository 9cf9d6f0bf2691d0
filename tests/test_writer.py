import asyncio
import sqlite3

from helpers import until

from oxyd.clock import RealClock
from oxyd.model import HistorySync, Message, Receipt
from oxyd.store.db import Store
from oxyd.store.outbox import Subscriptions
from oxyd.store.writer import Writer


def msg(i, chat="c1@s.whatsapp.net", ms=None, **kw):
    return Message(
        wa_id=f"W{i}",
        chat=chat,
        sender=chat,
        from_me=False,
        sent_at_ms=ms if ms is not None else 1000 + i,
        text=f"t{i}",
        **kw,
    )


async def open_writer(tmp_path, **kw):
    store = await Store.open(tmp_path)
    subs = Subscriptions()
    subs.set_tenant("a", None)
    w = Writer(store, RealClock(), subs, **kw)
    w.start()
    return store, w


def disk_full_for(w: Writer, attempts: int) -> None:
    """The next `attempts` batch writes fail as SQLite does on a full disk."""
    real_write = w._write
    left = {"n": attempts}

    async def write(batch):
        if left["n"] > 0:
            left["n"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return await real_write(batch)

    w._write = write


async def count(store, sql, *args):
    async with store.ro.execute(sql, args) as cur:
        return (await cur.fetchone())[0]


async def test_duplicates_are_noops_and_distinct_messages_all_land(tmp_path):
    store, w = await open_writer(tmp_path)
    for i in range(50):
        await w.put("a", msg(i))
    for i in range(50):  # redelivery of every message
        await w.put("a", msg(i))
    # Same WhatsApp id in another chat, or from another sender, is a distinct message.
    await w.put("a", msg(1, chat="c2@s.whatsapp.net"))
    await w.put("b", msg(1))
    await w.flush()
    assert await count(store, "SELECT count(*) FROM messages") == 52
    assert w.stats.duplicates == 50
    assert (
        await count(
            store, "SELECT message_count FROM chats WHERE jid='c1@s.whatsapp.net' AND tenant='a'"
        )
        == 50
    )
    assert await count(store, "SELECT messages_stored FROM tenant_counts WHERE tenant='a'") == 51
    # One webhook row per stored message, none for duplicates (tenant b has no webhook).
    assert await count(store, "SELECT count(*) FROM outbox WHERE type='message.received'") == 51
    await w.stop()
    await store.close()


async def test_batches_are_bounded_and_one_transaction_each(tmp_path):
    store, w = await open_writer(tmp_path, batch_max=10)
    w._task.cancel()  # fill the queue first, so batching is deterministic
    await asyncio.gather(w._task, return_exceptions=True)
    for i in range(95):
        await w.put("a", msg(i))
    assert w.depth == 95
    w.start()
    await w.flush()
    assert w.stats.batches == 10 and w.stats.rows == 95
    await w.stop()
    await store.close()


async def test_stop_drains_everything_to_disk(tmp_path):
    store, w = await open_writer(tmp_path)
    for i in range(2000):
        await w.put("a", msg(i))
    await w.stop()
    await store.close()
    con = sqlite3.connect(tmp_path / "oxyd.sqlite3")
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 2000


async def test_failing_writes_are_retried_and_nothing_is_lost(tmp_path):
    store, w = await open_writer(tmp_path)
    disk_full_for(w, 3)
    for i in range(100):
        await w.put("a", msg(i))
    await until(lambda: w.failing, what="writer reports failure")
    await w.flush()
    assert not w.failing
    assert w.stats.failures == 3
    assert await count(store, "SELECT count(*) FROM messages") == 100
    await w.stop()
    await store.close()


async def test_a_refused_item_is_isolated_and_the_rest_is_stored(tmp_path):
    store, w = await open_writer(tmp_path)
    for i in range(10):
        await w.put("a", msg(i))
    bad = Message(wa_id="X", chat="c", sender="c", from_me=False, sent_at_ms=object(), text="x")
    await w.put("a", bad)  # sqlite3 cannot bind an object: a bug-class error
    for i in range(10, 20):
        await w.put("a", msg(i))
    await w.flush()
    assert w.stats.rejected == 1
    assert await count(store, "SELECT count(*) FROM messages") == 20
    await w.stop()
    await store.close()


async def test_receipts_chats_contacts_and_history_counts(tmp_path):
    store, w = await open_writer(tmp_path)
    sent = Message(
        wa_id="S1",
        chat="c1@s.whatsapp.net",
        sender="me@s.whatsapp.net",
        from_me=True,
        sent_at_ms=10,
        text="hi",
    )
    await w.put("a", sent, sent=True)
    await w.put("a", msg(1, push_name="Alice"))
    await w.put("a", Receipt("c1@s.whatsapp.net", "c1@s.whatsapp.net", ("S1",), "delivered", 20))
    await w.put("a", Receipt("c1@s.whatsapp.net", "c1@s.whatsapp.net", ("S1",), "read", 30))
    # An older receipt arriving late never moves the status backwards.
    await w.put("a", Receipt("c1@s.whatsapp.net", "c1@s.whatsapp.net", ("S1",), "delivered", 40))
    hist = (*tuple(msg(i, from_history=True) for i in range(5)), msg(1))
    await w.put("a", HistorySync("RECENT", 1, hist, (("c1@s.whatsapp.net", "Alice chat"),)))
    await w.flush()
    m = await store.message_by_wa_id("a", "S1")
    assert (m["status"], m["delivered_at_ms"], m["read_at_ms"]) == ("read", 20, 30)
    chats, _ = await store.chats("a", 10, None)
    assert chats[0]["name"] == "Alice chat" and chats[0]["message_count"] == 6
    assert chats[0]["unread_count"] == 1  # history does not count as unread
    assert await count(store, "SELECT push_name FROM contacts") == "Alice"
    syncs = await store.history_syncs("a")
    assert (syncs[0]["processed"], syncs[0]["stored"]) == (6, 4)
    types = {r[0] for r in await (await store.ro.execute("SELECT type FROM outbox")).fetchall()}
    assert {"message.sent", "message.received", "message.status", "history.synced"} <= types
    await w.stop()
    await store.close()


async def test_cursor_pages_without_gaps_when_many_share_a_millisecond(tmp_path):
    store, w = await open_writer(tmp_path)
    for i in range(250):
        await w.put("a", msg(i, ms=5000 if i % 3 else 4000))
    await w.flush()
    seen, cursor = [], None
    while True:
        page, cursor = await store.messages("a", None, 7, cursor)
        seen += [m["id"] for m in page]
        if cursor is None:
            break
    assert len(seen) == 250 and len(set(seen)) == 250
    # newest first
    times = [m["sent_at_ms"] for m in (await store.messages("a", None, 250, None))[0]]
    assert times == sorted(times, reverse=True)
    await w.stop()
    await store.close()


async def test_a_storage_fault_raises_an_alert_once_writes_recover(tmp_path):
    store = await Store.open(tmp_path)
    w = Writer(store, RealClock(), Subscriptions(global_events=()))  # operator: alerts only
    disk_full_for(w, 2)
    w.start()
    await w.put("a", msg(1))
    await w.flush()
    async with store.ro.execute(
        "SELECT tenant, destination, body FROM outbox WHERE type='alert.storage'"
    ) as cur:
        rows = await cur.fetchall()
    assert len(rows) == 1 and rows[0][:2] == (None, "global")
    assert "disk is full" in rows[0][2]
    await w.stop()
    await store.close()
