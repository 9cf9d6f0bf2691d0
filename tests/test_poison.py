"""No request can stop storage: refused items are isolated, IN lists chunked, lists capped."""

import io
import json
import sqlite3

from helpers import until
from http_helpers import Harness
from test_writer import count, msg, open_writer

from oxyd.model import HistorySync, Receipt
from oxyd.store import batch as batch_mod
from oxyd.store import faults

CHAT = "c1@s.whatsapp.net"


def test_only_machine_faults_are_transient():
    con = sqlite3.connect(":memory:")
    try:
        con.execute(f"SELECT 1 WHERE 1 IN ({','.join('?' * 260_000)})", [1] * 260_000)
    except sqlite3.Error as e:
        too_many = e
    assert not faults.transient(too_many)  # refused every time: never retried
    assert not faults.transient(sqlite3.InterfaceError("Error binding parameter 1"))
    assert not faults.transient(ValueError("a bug"))
    for text in ("database or disk is full", "database is locked", "disk I/O error"):
        assert faults.transient(sqlite3.OperationalError(text))
    assert faults.transient(sqlite3.OperationalError("attempt to write a readonly database"))
    assert faults.transient(OSError(28, "No space left on device"))


async def test_a_260000_id_receipt_is_stored_in_chunks_beside_other_tenants(tmp_path):
    store, w = await open_writer(tmp_path)
    for i in range(20):
        await w.put("a", msg(i))
    await w.flush()
    ids = tuple(f"W{i}" for i in range(260_000))  # 20 of them exist
    await w.put("a", Receipt(CHAT, CHAT, ids, "read", 50))
    for i in range(100):
        await w.put("b", msg(i))
    await w.flush()
    assert w.stats.rejected == 0 and not w.failing
    assert await count(store, "SELECT count(*) FROM messages WHERE tenant='b'") == 100
    assert await count(store, "SELECT count(*) FROM messages WHERE status='read'") == 20
    assert await count(store, "SELECT count(*) FROM outbox WHERE type='message.status'") == 20
    await w.stop()
    await store.close()


async def test_an_item_refused_every_time_is_dead_lettered_and_the_rest_commits(
    tmp_path, monkeypatch
):
    # Without chunking, a long receipt is `too many SQL variables`: an OperationalError that
    # the writer used to retry forever, stopping storage for every tenant. SQLite's limit is
    # lowered to upstream's old default (999) so that a short list shows it quickly.
    monkeypatch.setattr(batch_mod, "IN_CHUNK", 10**6)
    store, w = await open_writer(tmp_path, batch_max=10**7)  # one batch for all
    await store.run_tx(lambda c: c.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    w._task.cancel()  # queue everything first: the poison sits inside one big batch
    w._task = None
    for i in range(50):
        await w.put("b", msg(i))
    await w.put("a", Receipt(CHAT, CHAT, tuple(f"X{i}" for i in range(2000)), "read", 5))
    for i in range(50, 100):
        await w.put("b", msg(i))
    w.start()
    await until(lambda: w.depth == 0 and not w.pending_by_tenant, 30, "drained")
    await w.flush()
    assert w.stats.rejected == 1
    assert not w.failing  # readiness never dropped for a poisoned item
    assert "too many SQL variables" in w.stats.last_error
    assert await count(store, "SELECT count(*) FROM messages WHERE tenant='b'") == 100
    # Writing goes on.
    await w.put("c", msg(1))
    await w.flush()
    assert await count(store, "SELECT count(*) FROM messages WHERE tenant='c'") == 1
    await w.stop()
    await store.close()


async def test_batches_are_bounded_by_rows_not_items(tmp_path):
    store, w = await open_writer(tmp_path, batch_max=100)
    w._task.cancel()
    w._task = None
    big = HistorySync("RECENT", 1, tuple(msg(i, from_history=True) for i in range(250)), ())
    await w.put("a", big)
    for i in range(300, 350):
        await w.put("a", msg(i))
    w.start()
    await w.flush()
    # The history (251 rows) goes alone; the 50 messages follow in one batch.
    assert w.stats.batches == 2
    assert await count(store, "SELECT count(*) FROM messages") == 300
    await w.stop()
    await store.close()


async def test_simulated_history_is_written_in_chunks(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("a")
        r = await hx.req(
            "POST",
            "/v1/tenants/a/simulate",
            json={"action": "history", "chats": 3, "messages": 4000},
        )
        assert r.status == 202, await r.text()
        store = hx.app.store
        await until(lambda: hx.app.supervisor.runners["a"].t.messages_stored == 12_000, 30)
        syncs = await store.history_syncs("a")
        assert len(syncs) == 3  # 5,000 messages a blob: three transactions, not one
        assert sum(s["stored"] for s in syncs) == 12_000
        chats, _ = await store.chats("a", 10, None)
        assert len(chats) == 3 and all(c["name"] for c in chats)
    finally:
        await hx.close()


async def test_a_tenant_token_cannot_send_a_huge_receipt(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("a")
        await hx.add("b")
        token = await hx.token("a")
        ids = ["1"] * 260_000  # fits the 1 MiB body limit
        body = {"action": "receipt", "ids": ids, "type": "read", "chat": "15551234567"}
        r = await hx.req(
            "POST",
            "/v1/tenants/a/simulate",
            token,
            data=io.BytesIO(json.dumps(body, separators=(",", ":")).encode()),
            headers={"Content-Type": "application/json"},
        )
        assert r.status == 400
        err = (await r.json())["error"]
        assert err["code"] == "invalid_action" and "1000" in err["message"]
        r = await hx.req(
            "POST",
            "/v1/tenants/b/simulate",
            json={"action": "message", "chat": "15551234567", "text": "x", "count": 200},
        )
        assert r.status == 202
        await until(lambda: hx.app.supervisor.runners["b"].t.messages_stored == 200, 10)
        r = await hx.req("GET", "/readyz", None)
        assert r.status == 200
    finally:
        await hx.close()
