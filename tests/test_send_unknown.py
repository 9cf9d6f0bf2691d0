"""Exactly once on an engine that cannot reuse message ids (neonize 0.5.2), on a fake clock.

The fake engine below stands where neonize does, behind the engine Protocol: a simulator
session whose send() lets the "library" choose the id (every call is a new message, as
neonize's SendMessage) and does what each test scripts.
"""

import asyncio
import json
import sqlite3

import pytest
from helpers import advance, config, make_app, until

from oxyd import app as oxyd_app
from oxyd.clock import FakeClock
from oxyd.engine import Client, Engine, EngineError, NotConnected, SendUnknown
from oxyd.model import State
from oxyd.outgoing import Outgoing, SendResult, new_wa_id
from oxyd.simulator.engine import SimulatorEngine
from oxyd.store import sendqueue
from oxyd.store.connection import DB_NAME

FAST = {
    "SUPERVISOR_HEARTBEAT_S": "10",
    "SUPERVISOR_STOP_GRACE_S": "0.2",
    "SEND_RATE_PER_MIN": "600",
    "SEND_BURST": "20",
    "SEND_MAX_ATTEMPTS": "5",
    "SEND_TIMEOUT_S": "5",
}


class NoReuseClient:
    """A simulator session that sends like neonize: a new id per call, no dedup."""

    reuses_message_ids = False

    def __init__(self, engine: "NoReuseEngine", inner) -> None:
        self.engine, self.inner = engine, inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def send(self, out: Outgoing) -> SendResult:
        self.engine.calls.append(out.id)
        step = self.engine.script.pop(0) if self.engine.script else "ok"
        if step == "not_connected":
            raise NotConnected("not connected")
        if step == "error":
            raise EngineError("server returned error 500")  # nothing left
        wa_id = new_wa_id()
        self.engine.accepted.append((out.id, wa_id))  # the server has it from here
        if step == "unknown":
            raise SendUnknown("timed out waiting for message send response")
        if step == "bug":
            raise KeyError("Timestamp")  # after the server took it: not an EngineError
        if step == "hang":
            await self.engine.release.wait()
        return SendResult(wa_id, self.engine.clock.now_ms())


class NoReuseEngine:
    name = "simulator"

    def __init__(self, cfg, clock) -> None:
        self.sim = SimulatorEngine(cfg.data_dir, cfg.simulator, clock)
        self.clock = clock
        self.script: list[str] = []
        self.calls: list[str] = []
        self.accepted: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    def client(self, tenant_id, sink):
        return NoReuseClient(self, self.sim.client(tenant_id, sink))

    async def close(self) -> None:
        self.release.set()
        await self.sim.close()


async def start(tmp_path, clock, **env):
    cfg = config(tmp_path, **{**FAST, **env})
    engine = NoReuseEngine(cfg, clock)
    app = await make_app(cfg, clock, {"simulator": engine})
    return app, engine


@pytest.fixture
async def env(tmp_path):
    clock = FakeClock()
    app, engine = await start(tmp_path, clock)
    yield app, engine, clock
    await oxyd_app.stop(app)


async def connected(app, tid="t1"):
    if tid not in app.supervisor.runners:
        await app.supervisor.add(tid, "simulator")
    r = app.supervisor.runners[tid]
    await until(lambda: r.t.state is State.CONNECTED, what=f"{tid} connected")


def text(body="hi"):
    return Outgoing(new_wa_id(), "15551230000@s.whatsapp.net", "text", {"text": body})


async def enqueue(app, body="hi", tid="t1"):
    return (await app.supervisor.sending.enqueue(tid, text(body), None))[1]["id"]


async def status(app, msg_id, tid="t1"):
    return await app.supervisor.sending.status(tid, msg_id)


async def started_at(app, msg_id, tid="t1"):
    row = await sendqueue.get(app.store, tid, msg_id)
    return row.started_at_ms


def test_the_fakes_stand_behind_the_engine_protocol(tmp_path):
    engine = NoReuseEngine(config(tmp_path), FakeClock())
    assert isinstance(engine, Engine)
    assert isinstance(engine.client("t1", lambda ev: None), Client)
    sim = engine.sim.client("t2", lambda ev: None)
    assert sim.reuses_message_ids is True


async def test_a_slow_send_is_never_timed_out_nor_sent_twice(env):
    app, engine, clock = env
    await connected(app)
    engine.script = ["hang"]
    msg = await enqueue(app)
    await until(lambda: engine.calls, what="the send began")
    assert await started_at(app, msg) is not None  # recorded before the engine call
    await advance(clock, 30.0)  # six times send.timeout_s
    assert engine.calls == [msg] and (await status(app, msg))["status"] == "queued"
    engine.release.set()  # whatsmeow's answer finally comes
    await until(lambda: app.supervisor.sending.sent == 1, what="sent")
    got = await status(app, msg)
    assert got["status"] == "sent" and got["wa_id"] == engine.accepted[0][1]
    assert engine.calls == [msg] and await started_at(app, msg) is None


async def test_an_unknown_outcome_fails_explicitly_and_is_not_resent(env):
    app, engine, clock = env
    await connected(app)
    await app.store.set_webhook("t1", "http://127.0.0.1:9/h", "s", None, 0)
    app.subs.set_tenant("t1", None)
    engine.script = ["unknown"]
    msg = await enqueue(app)
    after = await enqueue(app, "next")
    await until(lambda: app.supervisor.sending.sent == 1, what="the next one is sent")
    got = await status(app, msg)
    assert got["status"] == "failed"
    assert got["error"].startswith("outcome_unknown: timed out waiting")
    assert "send.resend_unknown" in got["error"]
    await advance(clock, 120.0, step_s=5.0)
    assert engine.calls == [msg, after]  # never a second attempt
    async with app.store.ro.execute(
        "SELECT body FROM outbox WHERE type='message.status' ORDER BY id"
    ) as cur:
        hooks = [json.loads(r[0])["data"] for r in await cur.fetchall()]
    failed = [h for h in hooks if h["id"] == msg]
    assert [h["status"] for h in failed] == ["failed"]
    assert failed[0]["error"].startswith("outcome_unknown")


async def test_an_unexpected_error_is_an_unknown_outcome_too(env):
    app, engine, _ = env
    await connected(app)
    engine.script = ["bug"]
    msg = await enqueue(app)
    await until(lambda: app.supervisor.sending.failed == 1, what="failed")
    got = await status(app, msg)
    assert got["error"].startswith("outcome_unknown: KeyError") and engine.calls == [msg]


async def test_resend_unknown_opts_into_at_least_once(tmp_path):
    clock = FakeClock()
    app, engine = await start(tmp_path, clock, SEND_RESEND_UNKNOWN="true")
    try:
        assert app.cfg.send.resend_unknown is True
        await connected(app)
        engine.script = ["unknown"]
        msg = await enqueue(app)
        await until(lambda: len(engine.calls) == 1)
        await advance(clock, 5.0, step_s=0.5)
        await until(lambda: app.supervisor.sending.sent == 1, what="resent")
        assert engine.calls == [msg, msg] and len(engine.accepted) == 2  # at least once
        assert (await status(app, msg))["attempts"] == 1
    finally:
        await oxyd_app.stop(app)


async def test_nothing_sent_is_retried_and_clears_the_mark(env):
    app, engine, clock = env
    await connected(app)
    engine.script = ["not_connected", "error"]
    msg = await enqueue(app)
    await until(lambda: len(engine.calls) == 1)
    await advance(clock, 5.0, step_s=0.25)  # 1 s after not connected, ~1 s of backoff
    await until(lambda: app.supervisor.sending.sent == 1, what="after a transient error")
    assert engine.calls == [msg] * 3 and len(engine.accepted) == 1
    assert await started_at(app, msg) is None


async def test_in_flight_when_the_process_ended_fails_as_unknown(tmp_path):
    """A stop while the engine call runs (past the grace) leaves the mark; the next process
    does not resend: the message may have left."""
    clock = FakeClock()
    app, engine = await start(tmp_path, clock)
    await connected(app)
    engine.script = ["hang"]
    msg = await enqueue(app)
    await until(lambda: engine.calls, what="the send began")
    await oxyd_app.stop(app)  # the call never ends within the grace
    with sqlite3.connect(app.cfg.data_dir / DB_NAME) as db:  # no daemon holds it now
        row = db.execute("SELECT status, started_at_ms FROM outgoing WHERE id=?", (msg,))
        assert row.fetchone()[1] is not None
    app, engine = await start(tmp_path, clock)
    try:
        after = await enqueue(app, "after the restart")
        await connected(app)
        await until(lambda: app.supervisor.sending.sent == 1, what="the next one is sent")
        got = await status(app, msg)
        assert got["status"] == "failed" and got["error"].startswith("outcome_unknown")
        assert engine.calls == [after]  # not sent again
    finally:
        await oxyd_app.stop(app)


async def test_a_stop_waits_for_a_send_in_flight(tmp_path):
    clock = FakeClock()
    app, engine = await start(tmp_path, clock, SUPERVISOR_STOP_GRACE_S="5")
    await connected(app)
    engine.script = ["hang"]
    msg = await enqueue(app)
    await until(lambda: engine.calls, what="the send began")
    asyncio.get_running_loop().call_later(0.2, engine.release.set)
    await oxyd_app.stop(app)  # waits for the real outcome within the grace
    app, engine = await start(tmp_path, clock)
    try:
        got = await status(app, msg)
        assert got["status"] == "sent" and await started_at(app, msg) is None
    finally:
        await oxyd_app.stop(app)


async def test_cancel_after_an_unknown_attempt_says_so(env):
    app, _, _ = env
    await connected(app)
    await app.supervisor.stop_tenant("t1")
    msg = await enqueue(app)
    await sendqueue.mark_started(app.supervisor.sending.tx, "t1", msg, 1)  # an ended process
    code, answer = await app.supervisor.sending.cancel("t1", msg)
    assert code == 200 and answer["status"] == "cancelled"
    assert answer["error"].startswith("outcome_unknown")
    assert (await status(app, msg))["error"].startswith("outcome_unknown")


async def test_an_id_reusing_engine_resends_a_lost_answer_with_the_same_id(tmp_path):
    """The simulator reuses ids: a send whose answer is lost times out and is resent, and
    the server keeps one message."""
    clock = FakeClock()
    app = await make_app(config(tmp_path, **FAST), clock)
    try:
        await connected(app)
        sup = app.supervisor
        assert sup.runners["t1"].client.reuses_message_ids is True
        await sup.simulate("t1", {"action": "send_mode", "lose_answers": True})
        msg = await enqueue(app)
        log = lambda: sup.simulate("t1", {"action": "sent_log"})  # noqa: E731
        await until(lambda: _count(log, msg, 1), what="accepted")
        await advance(clock, 6.0, step_s=0.5)  # past send.timeout_s: a retry is due
        await sup.simulate("t1", {"action": "send_mode", "lose_answers": False})
        await advance(clock, 5.0, step_s=0.5)
        await until(lambda: sup.sending.sent == 1, what="sent")
        assert (await status(app, msg))["attempts"] >= 1
        assert [e["id"] for e in (await log())["sent"]] == [msg]
    finally:
        await oxyd_app.stop(app)


async def _count(log, msg, n):
    return sum(e["id"] == msg for e in (await log())["sent"]) == n
