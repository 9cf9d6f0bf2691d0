"""Supervisor behaviour on a fake clock with the simulator engine (real SQLite)."""

import random

import pytest
from helpers import advance, advance_until, config, make_app, until

from oxyd import app as oxyd_app
from oxyd import backoff
from oxyd import model as m
from oxyd.clock import FakeClock
from oxyd.engine import EngineError
from oxyd.model import State

FAST = {
    "SUPERVISOR_HEARTBEAT_S": "10",
    "SUPERVISOR_ZOMBIE_AFTER_S": "60",
    "SUPERVISOR_STABLE_AFTER_S": "60",
    "SUPERVISOR_BACKOFF_BASE_S": "2",
    "SUPERVISOR_BACKOFF_CAP_S": "300",
    "SUPERVISOR_MAX_FAILURES": "10",
    "SUPERVISOR_RECONNECT_TIMEOUT_S": "120",
    "SUPERVISOR_CONNECT_TIMEOUT_S": "30",
}


@pytest.fixture
async def env(tmp_path):
    clock = FakeClock()
    app = await make_app(config(tmp_path, **FAST), clock)
    yield app, clock
    await oxyd_app.stop(app)


def waiting(r):
    """The runner is parked on its timer (armed before this turns true), so advancing the
    fake clock now wakes it at the right moment."""
    return r._waiter is not None


def state(app, tid):
    return app.supervisor.runners[tid].t.state


async def add_connected(app, tid="t1"):
    await app.supervisor.add(tid, "simulator")
    await until(lambda: state(app, tid) is State.CONNECTED, what=f"{tid} connected")


async def sim(app, tid, **action):
    return await app.supervisor.simulate(tid, action)


def test_backoff_sequence_doubles_to_the_cap_within_jitter_bounds():
    rng = random.Random(7)
    for attempt in range(12):
        nominal = min(300.0, 2.0 * 2**attempt)
        d = backoff.delay_s(attempt, 2.0, 300.0, rng)
        assert nominal * (1 - backoff.JITTER) <= d <= nominal
    assert backoff.delay_s(50, 2.0, 300.0, rng) <= 300.0
    # exact values for a seeded rng, so a change in the formula shows
    rng = random.Random(1)
    got = [round(backoff.delay_s(a, 2.0, 300.0, rng), 3) for a in range(4)]
    rng = random.Random(1)
    want = [round(min(300, 2 * 2**a) * (1 - 0.2 * rng.random()), 3) for a in range(4)]
    assert got == want


async def test_failed_connects_back_off_exponentially_and_reset_only_when_stable(env):
    app, clock = env
    await add_connected(app)
    await sim(app, "t1", action="fail_connects", count=4)
    await app.supervisor.restart_tenant("t1")
    r = app.supervisor.runners["t1"]
    waits = []
    for attempt in range(4):
        # ...and its timer armed: advancing before that would not wake it
        await until(
            lambda n=attempt + 1: r.t.state is State.BACKOFF and r.t.failures == n and waiting(r),
            what=f"backoff #{attempt + 1}",
        )
        wait_s = (r.t.next_attempt_ms - clock.now_ms()) / 1000
        waits.append(wait_s)
        nominal = 2.0 * 2**attempt
        assert nominal * 0.8 - 0.01 <= wait_s <= nominal + 0.01
        # nothing happens before the delay is over
        await advance(clock, wait_s * 0.5)
        assert r.t.state is State.BACKOFF
        await advance(clock, wait_s * 0.5 + 0.01)
    await until(lambda: r.t.state is State.CONNECTED, what="connected after failures")
    assert r.t.failures == 4  # a bare "connected" does not reset the counter
    await advance(clock, 30, step_s=5)
    assert r.t.failures == 4
    await advance(clock, 35, step_s=5)
    await until(lambda: r.t.failures == 0, what="reset after stable period")

    async def persisted() -> bool:  # not only in memory (the write follows the reset)
        return (await app.store.tenant("t1")).failures == 0

    await until(persisted, what="reset persisted")


@pytest.mark.parametrize(
    ("action", "parked", "extra"),
    [
        ("logout", State.LOGGED_OUT, {}),
        ("replace", State.CONFLICT, {}),
        ("outdated", State.OUTDATED, {}),
    ],
)
async def test_terminal_reasons_park_with_no_further_attempt(env, action, parked, extra):
    app, clock = env
    app.subs.set_tenant("t1", None)
    await add_connected(app)
    connects = app.supervisor.gate.total
    await sim(app, "t1", action=action, **extra)
    await until(lambda: state(app, "t1") is parked, what=f"parked in {parked}")
    await advance(clock, 3600, step_s=60)
    assert state(app, "t1") is parked
    assert app.supervisor.gate.total == connects  # never retried
    row = await app.store.tenant("t1")
    assert row.state is parked and row.last_error
    async with app.store.ro.execute(
        "SELECT count(*) FROM outbox WHERE type = ?", (f"alert.{parked.value}",)
    ) as cur:
        assert (await cur.fetchone())[0] == 1
    # an operator's start leaves the parked state (logout needs a new pairing first)
    out = await app.supervisor.start_tenant("t1")
    if parked is State.LOGGED_OUT:
        assert out["state"] == "new"
    else:
        await until(lambda: state(app, "t1") is State.CONNECTED, what="operator start")


async def test_circuit_breaker_parks_after_max_failures(tmp_path):
    clock = FakeClock()
    app = await make_app(config(tmp_path, **{**FAST, "SUPERVISOR_MAX_FAILURES": "3"}), clock)
    try:
        await add_connected(app)
        await sim(app, "t1", action="fail_connects", count=100)
        await app.supervisor.restart_tenant("t1")
        for _ in range(20):
            await advance(clock, 20, step_s=2)
            if state(app, "t1") is State.FAILED:
                break
        assert state(app, "t1") is State.FAILED
        assert app.supervisor.runners["t1"].t.failures == 3
        total = app.supervisor.gate.total
        await advance(clock, 3600, step_s=100)
        assert app.supervisor.gate.total == total
    finally:
        await oxyd_app.stop(app)


async def test_ban_is_retried_once_after_expiry(env):
    app, clock = env
    await add_connected(app)
    connects = app.supervisor.gate.total
    await sim(app, "t1", action="ban", expire_s=100)
    r = app.supervisor.runners["t1"]
    await until(lambda: state(app, "t1") is State.BANNED and waiting(r), what="banned")
    assert r.t.next_attempt_ms == r.t.ban_expires_ms
    await advance(clock, 90, step_s=10)
    assert state(app, "t1") is State.BANNED and app.supervisor.gate.total == connects
    await advance(clock, 15, step_s=5)
    await until(lambda: state(app, "t1") is State.CONNECTED, what="connected after ban")
    assert app.supervisor.gate.total == connects + 1


async def test_a_second_ban_right_after_expiry_parks(env):
    app, clock = env
    await add_connected(app)
    await sim(app, "t1", action="ban", expire_s=10)
    await until(lambda: state(app, "t1") is State.BANNED and waiting(app.supervisor.runners["t1"]))
    await advance(clock, 11, step_s=1)
    await until(lambda: state(app, "t1") is State.CONNECTED)
    await sim(app, "t1", action="ban", expire_s=10)
    await until(lambda: state(app, "t1") is State.FAILED, what="parked after second ban")


async def test_zombie_is_detected_and_rebuilt(env):
    app, clock = env
    app.subs.set_tenant("t1", None)
    await add_connected(app)
    await sim(app, "t1", action="stall")
    await sim(app, "t1", action="message", chat="123456", text="held by the server")
    await advance(clock, 50, step_s=10)
    assert state(app, "t1") is State.CONNECTED  # not yet: zombie_after_s is 60
    await advance_until(clock, lambda: app.supervisor.zombies["t1"] == 1, step_s=10)
    # counted before the session is torn down: wait for that, or "connected" passes too early
    await until(lambda: state(app, "t1") is not State.CONNECTED, what="the session torn down")
    await advance_until(clock, lambda: state(app, "t1") is State.CONNECTED, step_s=1)

    async def stored() -> bool:  # the simulator drains its offline queue after the connect
        await app.writer.flush()
        return await app.store.count_messages("t1") == 1

    # the message held while stalled arrives after the rebuild, exactly once
    await until(stored, what="the held message stored")
    await advance(clock, 10, step_s=5)
    assert await app.store.count_messages("t1") == 1
    async with app.store.ro.execute("SELECT count(*) FROM outbox WHERE type='alert.zombie'") as c:
        assert (await c.fetchone())[0] == 1


async def test_library_reconnect_that_lasts_too_long_is_rebuilt(tmp_path):
    clock = FakeClock()
    # The library's own reconnect takes 100 s here, longer than reconnect_timeout_s (60 s).
    cfg = config(
        tmp_path,
        **{**FAST, "SUPERVISOR_CONNECT_TIMEOUT_S": "200", "SUPERVISOR_RECONNECT_TIMEOUT_S": "60"},
        SIMULATOR_CONNECT_LATENCY_MS="100000",
    )
    app = await make_app(cfg, clock)
    try:
        await app.supervisor.add("t1", "simulator")
        # both timers armed: the connect deadline and the simulated connect latency
        await until(lambda: clock.sleepers >= 2, what="connect in progress")
        await advance(clock, 101, step_s=10)
        await until(lambda: state(app, "t1") is State.CONNECTED)
        await sim(app, "t1", action="disconnect")
        await until(lambda: state(app, "t1") is State.RECONNECTING)
        await until(lambda: clock.sleepers >= 2, what="library reconnect in progress")
        await advance(clock, 50, step_s=10)
        assert state(app, "t1") is State.RECONNECTING
        await advance_until(
            clock,
            lambda: state(app, "t1") in (State.BACKOFF, State.CONNECTING),
            what="rebuilt after reconnect timeout",
        )
    finally:
        await oxyd_app.stop(app)


async def test_failed_library_reconnect_counts_one_failure_before_the_gated_attempt(env):
    """The accounting behind the storms test: the drop whose library reconnect fails is one
    counted failure, the gated reconnect carries it, and only stable_after_s clears it."""
    app, clock = env
    await add_connected(app)
    r = app.supervisor.runners["t1"]
    connects = app.supervisor.gate.total
    await sim(app, "t1", action="fail_connects", count=1)
    await sim(app, "t1", action="disconnect")
    await until(
        lambda: r.t.state is State.BACKOFF and r.t.failures == 1 and waiting(r),
        what="backoff after the failed library reconnect",
    )
    assert app.supervisor.gate.total == connects  # counted before any gated attempt
    await advance(clock, 2.1, step_s=0.5)
    await until(lambda: r.t.state is State.CONNECTED, what="gated reconnect")
    assert app.supervisor.gate.total == connects + 1
    assert r.t.failures == 1  # a bare "connected" does not clear it
    await advance(clock, 30, step_s=5)
    assert r.t.failures == 1
    await advance_until(clock, lambda: r.t.failures == 0, what="cleared after stable")


async def test_disconnect_is_the_librarys_reconnect_not_ours(env):
    app, _clock = env
    await add_connected(app)
    connects = app.supervisor.gate.total
    await sim(app, "t1", action="disconnect")
    await until(lambda: app.supervisor.reconnects["t1"] == 1, what="library reconnected")
    assert state(app, "t1") is State.CONNECTED
    assert app.supervisor.gate.total == connects


async def test_connects_in_flight_never_exceed_the_limit(tmp_path):
    clock = FakeClock()
    cfg = config(
        tmp_path, **FAST, SUPERVISOR_CONNECT_CONCURRENCY="5", SIMULATOR_CONNECT_LATENCY_MS="1000"
    )
    app = await make_app(cfg, clock)
    try:
        for i in range(100):
            await app.supervisor.add(f"t{i:03d}", "simulator")
        sup = app.supervisor
        # 20 fake seconds would do, but fake time can outrun the real SQLite writes on a busy
        # machine (a connect then times out and backs off): allow ample fake time instead.
        for _ in range(600):
            await advance(clock, 1, step_s=1)
            if all(r.t.state is State.CONNECTED for r in sup.runners.values()):
                break
        assert all(r.t.state is State.CONNECTED for r in sup.runners.values())
        assert sup.gate.peak == 5
    finally:
        await oxyd_app.stop(app)


class BrokenClient:
    """Raises on every call: a buggy engine or a corrupt store."""

    def __getattr__(self, name):
        async def fail(*a, **k):
            raise RuntimeError(f"{name} exploded")

        return fail


class BrokenEngine:
    name = "broken"

    def client(self, tenant_id, sink):
        return BrokenClient()

    async def close(self):
        pass


async def test_one_failing_tenant_never_touches_the_others(tmp_path):
    clock = FakeClock()
    app = await make_app(config(tmp_path, **FAST), clock, {"broken": BrokenEngine()})
    try:
        await app.supervisor.add("bad", "broken")  # is_paired raises: parked, not a crash
        assert state(app, "bad") is State.FAILED
        assert "device store unreadable" in app.supervisor.runners["bad"].t.last_error
        app.supervisor.runners["bad"].spawn("connect")  # and if it runs anyway...
        for i in range(20):
            await app.supervisor.add(f"ok{i}", "simulator")
        await until(lambda: all(state(app, f"ok{i}") is State.CONNECTED for i in range(20)))
        await advance(clock, 30, step_s=2)
        assert state(app, "bad") in (State.BACKOFF, State.CONNECTING)
        assert "exploded" in app.supervisor.runners["bad"].t.last_error
        for i in range(20):
            await sim(app, f"ok{i}", action="message", chat="123456", text="x", count=10)
        await until(lambda: app.writer.stats.stored == 200, what="all ingested")
        assert all(state(app, f"ok{i}") is State.CONNECTED for i in range(20))
        assert app.supervisor.broken is None
    finally:
        await oxyd_app.stop(app)


async def test_messages_reach_the_store_in_order_per_tenant(env):
    app, _clock = env
    await add_connected(app)
    await sim(app, "t1", action="message", chat="123456", text="m", count=500)
    await until(lambda: app.writer.stats.stored == 500)
    async with app.store.ro.execute("SELECT text FROM messages ORDER BY id") as cur:
        texts = [r[0] for r in await cur.fetchall()]
    assert texts == [f"m {i + 1}" for i in range(500)]
    assert app.supervisor.runners["t1"].t.messages_stored == 500


async def test_history_sync_records_processed_and_stored(env):
    app, _clock = env
    await add_connected(app)
    await sim(app, "t1", action="history", chats=3, messages=10)
    await sim(app, "t1", action="history", chats=4, messages=10)  # overlaps the first
    await until(lambda: app.writer.stats.stored == 40)
    await app.writer.flush()
    syncs = await app.store.history_syncs("t1")
    assert [(s["processed"], s["stored"]) for s in syncs] == [(40, 10), (30, 30)]


async def test_pairing_after_logout_shows_a_qr_then_connects(env):
    app, clock = env
    await add_connected(app)
    await sim(app, "t1", action="logout")
    await until(lambda: state(app, "t1") is State.LOGGED_OUT)
    await app.supervisor.pair("t1", None)
    await until(lambda: (app.supervisor.pairing("t1")["qr"] or "").startswith("SIM"))
    assert state(app, "t1") is State.PAIRING
    await advance(clock, 1.5, step_s=0.5)
    await until(lambda: state(app, "t1") is State.CONNECTED, what="paired and connected")
    with pytest.raises(Exception, match="paired"):
        await app.supervisor.pair("t1", None)


async def test_health_sweep_counts_and_restarts_a_dead_task(env):
    app, _clock = env
    await add_connected(app, "a")
    await add_connected(app, "b")
    await sim(app, "b", action="replace")
    await until(lambda: state(app, "b") is State.CONFLICT)
    r = app.supervisor.runners["a"]
    await r.cancel()  # a task that died while its state says connected
    result = await app.supervisor.health_sweep()
    assert (result["total"], result["failed"], result["reconnected"]) == (2, 1, 1)
    assert {a["tenant"] for a in result["alerts"]} == {"a", "b"}
    await until(lambda: state(app, "a") is State.CONNECTED and r.running)
    result = await app.supervisor.health_sweep()
    assert (result["healthy"], result["reconnected"]) == (1, 0)


async def test_restore_brings_back_paired_tenants_and_leaves_parked_ones(tmp_path):
    cfg = config(tmp_path, **FAST)
    clock = FakeClock()
    app = await make_app(cfg, clock)
    for tid in ("a", "b", "c", "s"):
        await add_connected(app, tid)
    await sim(app, "b", action="replace")
    await until(lambda: state(app, "b") is State.CONFLICT)
    await app.supervisor.stop_tenant("s")
    await oxyd_app.stop(app)
    # a folder without a row is adopted; a tenant whose device store vanished is "new"
    (cfg.data_dir / "tenants" / "adopted").mkdir()
    (cfg.data_dir / "tenants" / "adopted" / "simulator.json").write_text(
        '{"paired": true, "jid": "1@s.whatsapp.net"}'
    )
    (cfg.data_dir / "tenants" / "c" / "simulator.json").write_text('{"paired": false}')
    app = await make_app(cfg, FakeClock())
    try:
        await until(lambda: state(app, "a") is State.CONNECTED, what="a restored")
        await until(lambda: state(app, "adopted") is State.CONNECTED, what="adopted")
        await until(lambda: state(app, "c") is State.NEW, what="c unpaired")
        assert state(app, "b") is State.CONFLICT
        assert state(app, "s") is State.STOPPED
    finally:
        await oxyd_app.stop(app)


async def test_unknown_simulate_action_is_an_error(env):
    app, _ = env
    await add_connected(app)
    for bad in (
        {"action": "nope"},
        {"action": "message", "chat": "1"},
        {"action": "message", "chat": "1", "text": "x", "count": "2"},
        {"action": "ban"},
        {"action": "message", "chat": "1", "text": "x", "zz": 1},
    ):
        with pytest.raises(ValueError):
            await app.supervisor.simulate("t1", bad)
    assert isinstance(EngineError("x"), Exception) and m.State.NEW


async def test_back_pressure_from_a_small_writer_queue_loses_nothing(tmp_path):
    clock = FakeClock()
    app = await make_app(config(tmp_path, **FAST, STORE_QUEUE_MAX="10", STORE_BATCH_MAX="5"), clock)
    try:
        await add_connected(app)
        assert app.writer.offer("x", [object()] * 0) == 0
        await sim(app, "t1", action="message", chat="123456", text="m", count=500)
        # a stop in the middle of the hand-over (the runner is cancelled while waiting for room)
        await until(lambda: app.writer.stats.stored >= 100)
        await app.supervisor.stop_tenant("t1")
        await app.supervisor.start_tenant("t1")
        await until(lambda: app.writer.stats.stored == 500, what="all 500 stored")
        async with app.store.ro.execute("SELECT text FROM messages ORDER BY id") as cur:
            texts = [r[0] for r in await cur.fetchall()]
        assert texts == [f"m {i + 1}" for i in range(500)]
    finally:
        await oxyd_app.stop(app)
