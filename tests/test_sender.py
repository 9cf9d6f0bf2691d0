"""The outgoing queue and its sender on a fake clock (simulator engine, real SQLite)."""

import json

import pytest
from helpers import advance, config, make_app, until

from oxyd import app as oxyd_app
from oxyd.engine import EngineError
from oxyd.model import State
from oxyd.outgoing import Outgoing, new_wa_id
from oxyd.sender import SendError, request_hash

FAST = {
    "SUPERVISOR_HEARTBEAT_S": "10",
    "SUPERVISOR_ZOMBIE_AFTER_S": "60",
    "SEND_RATE_PER_MIN": "20",
    "SEND_BURST": "5",
    "SEND_QUEUE_MAX": "50",
    "SEND_QUEUE_MAX_AGE_S": "40",
    "SEND_MAX_ATTEMPTS": "3",
}


@pytest.fixture
async def env(tmp_path):
    from oxyd.clock import FakeClock

    clock = FakeClock()
    app = await make_app(config(tmp_path, **FAST), clock)
    yield app, clock
    await oxyd_app.stop(app)


def state(app, tid="t1"):
    return app.supervisor.runners[tid].t.state


async def add_connected(app, tid="t1"):
    await app.supervisor.add(tid, "simulator")
    await until(lambda: state(app, tid) is State.CONNECTED, what=f"{tid} connected")


async def sent_log(app, tid="t1"):
    return (await app.supervisor.simulate(tid, {"action": "sent_log"}))["sent"]


def text(to="15551230000", body="hi"):
    return Outgoing(new_wa_id(), f"{to}@s.whatsapp.net", "text", {"text": body})


async def test_burst_then_paced_never_above_the_bucket(env):
    app, clock = env
    await add_connected(app)
    sending = app.supervisor.sending
    ids = [(await sending.enqueue("t1", text(body=f"m{i}"), None))[1]["id"] for i in range(9)]
    await until(lambda: sending.sent == 5, what="the burst")
    await advance(clock, 2.0)
    assert sending.sent == 5  # 20/min: the next token after 3 s (plus up to 20% jitter)
    await advance(clock, 30.0, step_s=0.25)
    await until(lambda: sending.sent == 9, what="paced rest")
    log = await sent_log(app)
    assert [e["id"] for e in log] == ids  # in order
    times_s = [e["at_ms"] / 1000 for e in log]
    for i, t in enumerate(times_s):  # never more than burst + rate * elapsed
        for u in times_s[i:]:
            assert sum(t <= x <= u for x in times_s) <= 5 + (u - t) / 3.0 + 1e-6
    assert times_s[-1] - times_s[4] >= 4 * 3.0 - 1e-6  # 4 tokens refilled at 20/min


async def test_queued_while_stopped_sent_once_after_start_with_receipts(env):
    app, clock = env
    await add_connected(app)
    sup = app.supervisor
    await sup.stop_tenant("t1")
    _, answer = await sup.sending.enqueue("t1", text(), None)
    assert answer["status"] == "queued"
    await advance(clock, 5.0)
    assert (await sup.sending.status("t1", answer["id"]))["status"] == "queued"
    await sup.start_tenant("t1")
    await until(lambda: sup.sending.sent == 1, what="sent after start")
    await advance(clock, 1.0, step_s=0.05)  # delivered after 50 ms, read after 150 ms

    async def read():
        return (await sup.sending.status("t1", answer["id"]))["status"] == "read"

    await until(read, what="read receipt")
    got = await sup.sending.status("t1", answer["id"])
    assert got["delivered_at_ms"] and got["read_at_ms"] and got["sent_at_ms"]
    assert [e["id"] for e in await sent_log(app)] == [answer["id"]]


async def test_idempotency_key_replays_and_conflicts(env):
    app, _ = env
    await add_connected(app)
    sending = app.supervisor.sending
    h1 = request_hash("POST", "/x", {"to": "1", "text": "a"})
    h2 = request_hash("POST", "/x", {"text": "a", "to": "1"})
    assert h1 == h2  # key order does not make another request
    first = await sending.enqueue("t1", text(), ("k1", h1))
    again = await sending.enqueue("t1", text(), ("k1", h1))
    assert first == again
    with pytest.raises(SendError) as e:
        await sending.enqueue("t1", text(), ("k1", request_hash("POST", "/x", {"text": "b"})))
    assert e.value.code == "idempotency_conflict" and e.value.status == 409
    await until(lambda: sending.sent == 1)
    assert len(await sent_log(app)) == 1


async def test_queue_full_only_past_queue_max(env):
    app, _ = env
    await add_connected(app)
    sup = app.supervisor
    await sup.stop_tenant("t1")
    for _ in range(50):
        await sup.sending.enqueue("t1", text(), None)
    with pytest.raises(SendError) as e:
        await sup.sending.enqueue("t1", text(), None)
    assert (e.value.code, e.value.status) == ("queue_full", 429)


async def test_terminal_and_transient_failures(env, monkeypatch):
    app, clock = env
    await add_connected(app)
    sending = app.supervisor.sending
    _, bad = await sending.enqueue("t1", text(to="9991234567"), None)
    await until(lambda: sending.failed == 1, what="not on WhatsApp fails")
    got = await sending.status("t1", bad["id"])
    assert got["status"] == "failed" and got["error"].startswith("not_on_whatsapp")

    client = app.supervisor.runners["t1"].client
    real_send, calls = client.send, []

    async def flaky(out):
        calls.append(out.id)
        if len(calls) < 3:
            raise EngineError("server said 500")
        return await real_send(out)

    monkeypatch.setattr(client, "send", flaky)
    _, ok = await sending.enqueue("t1", text(), None)
    await until(lambda: len(calls) == 1)
    await advance(clock, 10.0, step_s=0.25)  # backoff 1 s then 2 s (less jitter)
    await until(lambda: sending.sent == 1, what="sent after two transient failures")
    assert calls == [ok["id"]] * 3  # the same id on every attempt
    got = await sending.status("t1", ok["id"])
    assert got["attempts"] == 2 and got["status"] in ("sent", "delivered", "read")


async def test_cancel_queued_and_revoke_sent(env):
    app, _ = env
    await add_connected(app)
    sup = app.supervisor
    _, first = await sup.sending.enqueue("t1", text(), None)
    await until(lambda: sup.sending.sent == 1)
    await sup.stop_tenant("t1")
    _, queued = await sup.sending.enqueue("t1", text(body="never"), None)
    status, answer = await sup.sending.cancel("t1", queued["id"])
    assert status == 200 and answer["status"] == "cancelled"
    with pytest.raises(SendError) as e:
        await sup.sending.cancel("t1", queued["id"])
    assert e.value.code == "not_cancellable"
    status, revoke = await sup.sending.cancel("t1", first["id"])
    assert status == 202 and revoke["kind"] == "revoke" and revoke["ref_id"] == first["id"]
    await sup.start_tenant("t1")
    await until(lambda: sup.sending.sent == 2, what="the revoke went out")
    log = await sent_log(app)
    assert [e["kind"] for e in log] == ["text", "revoke"]
    assert log[1]["ref_id"] == first["id"]
    assert (await sup.sending.status("t1", first["id"]))["status"] == "revoked"


async def test_parked_tenant_fails_its_queue_after_max_age(env):
    app, clock = env
    await add_connected(app)
    sup = app.supervisor
    await sup.simulate("t1", {"action": "replace"})  # conflict: parked, needs a person
    await until(lambda: state(app) is State.CONFLICT)
    _, answer = await sup.sending.enqueue("t1", text(), None)
    await advance(clock, 30.0)
    assert (await sup.sending.status("t1", answer["id"]))["status"] == "queued"
    await advance(clock, 25.0)

    async def failed():
        return (await sup.sending.status("t1", answer["id"]))["status"] == "failed"

    await until(failed, what="expired in the parked queue")
    got = await sup.sending.status("t1", answer["id"])
    assert got["error"].startswith("tenant_parked")


async def test_order_kept_across_an_offline_window(env):
    app, clock = env
    await add_connected(app)
    sup = app.supervisor
    await sup.simulate("t1", {"action": "offline"})
    await until(lambda: state(app) is State.RECONNECTING)
    ids = [(await sup.sending.enqueue("t1", text(body=str(i)), None))[1]["id"] for i in range(4)]
    await advance(clock, 3.0)
    assert await sent_log(app) == []
    await sup.simulate("t1", {"action": "online"})
    await until(lambda: sup.sending.sent == 4, what="sent after online")
    assert [e["id"] for e in await sent_log(app)] == ids


async def test_status_webhooks_for_every_change(env):
    app, clock = env
    await add_connected(app)
    await app.store.set_webhook("t1", "http://127.0.0.1:9/h", "s", None, 0)
    app.subs.set_tenant("t1", None)
    await app.supervisor.sending.enqueue("t1", text(), None)
    await until(lambda: app.supervisor.sending.sent == 1)
    await advance(clock, 1.0, step_s=0.05)

    async def statuses():
        async with app.store.ro.execute(
            "SELECT body FROM outbox WHERE type='message.status' ORDER BY id"
        ) as cur:
            got = [json.loads(r[0])["data"]["status"] for r in await cur.fetchall()]
        return got == ["sent", "delivered", "read"]

    await until(statuses, what="sent, delivered, read webhooks")
