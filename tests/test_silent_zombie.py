"""Silent zombies: the heartbeat passes but no event arrives (neonize: event marshalling fails,
the client stays logged in). On a tenant that normally gets traffic, that is a zombie: rebuilt,
with an alert.zombie; a quiet tenant is never rebuilt for its silence. Fake clock, simulator."""

import pytest
from helpers import advance, advance_until, config, make_app, until

from oxyd import app as oxyd_app
from oxyd.clock import FakeClock
from oxyd.liveness import BUSY_WINDOWS, Traffic
from oxyd.model import State

CFG = {
    "SUPERVISOR_HEARTBEAT_S": "10",
    "SUPERVISOR_ZOMBIE_AFTER_S": "60",
    "SUPERVISOR_STABLE_AFTER_S": "60",
    "SUPERVISOR_BACKOFF_BASE_S": "2",
}


@pytest.fixture
async def env(tmp_path):
    clock = FakeClock()
    app = await make_app(config(tmp_path, **CFG), clock)
    app.subs.set_tenant("t1", None)  # every event type, alerts included, into the outbox
    await app.supervisor.add("t1", "simulator")
    await until(lambda: state(app) is State.CONNECTED, what="connected")
    yield app, clock
    await oxyd_app.stop(app)


def state(app):
    return app.supervisor.runners["t1"].t.state


async def message(app, n):
    await app.supervisor.simulate("t1", {"action": "message", "chat": "123456", "text": f"m{n}"})


async def _eq(aw, want) -> bool:
    return await aw == want


async def zombie_alerts(app):
    sql = "SELECT body FROM outbox WHERE type='alert.zombie'"
    async with app.store.ro.execute(sql) as c:
        return [row[0] for row in await c.fetchall()]


async def test_busy_tenant_whose_events_stop_is_rebuilt_with_an_alert(env):
    app, clock = env
    # Traffic every 20 s for 200 s: more than BUSY_WINDOWS x zombie_after_s.
    for n in range(10):
        await message(app, n)
        await advance(clock, 20, step_s=10)
    await app.supervisor.simulate("t1", {"action": "mute"})
    for n in range(10, 13):  # held by the muted client: nothing reaches oxyd
        await message(app, n)
        await advance(clock, 10, step_s=10)
    assert state(app) is State.CONNECTED
    assert app.supervisor.zombies["t1"] == 0  # 30 s of silence: not yet
    # From 60 s of silence, the next passing heartbeat judges it.
    await advance_until(clock, lambda: app.supervisor.zombies["t1"] == 1, step_s=10)
    # The count comes before the runner tears the session down: until then the state still
    # says connected, and waiting for "connected" would pass before the rebuild (the backoff
    # then waits on the fake clock that no longer moves).
    await until(lambda: state(app) is not State.CONNECTED, what="the zombie session torn down")
    # the backoff after the rebuild, then the new session
    await advance_until(clock, lambda: state(app) is State.CONNECTED, step_s=1)

    async def stored() -> int:
        await app.writer.flush()
        return await app.store.count_messages("t1")

    # What the muted client held arrives after the rebuild, exactly once.
    await until(lambda: _eq(stored(), 13), what="the held messages stored")
    await advance(clock, 30, step_s=10)
    assert await stored() == 13
    await until(lambda: zombie_alerts(app), what="alert.zombie in the outbox")
    alerts = await zombie_alerts(app)
    assert len(alerts) == 1 and "no event while the heartbeat passes" in alerts[0]


async def test_quiet_tenant_is_never_rebuilt_for_its_silence(env):
    app, clock = env
    await message(app, 0)  # a little traffic, then hours of quiet: normal for many numbers
    await advance(clock, 30, step_s=10)
    await message(app, 1)
    await advance(clock, 3 * 3600, step_s=60)
    assert app.supervisor.zombies["t1"] == 0
    assert state(app) is State.CONNECTED


async def test_silence_after_a_busy_spell_rebuilds_once_not_in_a_loop(env):
    app, clock = env
    for n in range(10):
        await message(app, n)
        await advance(clock, 20, step_s=10)
    # The business closes for the night: no traffic, nothing wrong.
    await advance_until(clock, lambda: app.supervisor.zombies["t1"] == 1, step_s=10)
    await advance(clock, 3600, step_s=60)
    await until(lambda: state(app) is State.CONNECTED)
    assert app.supervisor.zombies["t1"] == 1


def test_traffic_run_needs_busy_windows_without_a_long_gap():
    t = Traffic(gap_s=60)
    for s in range(0, 100, 30):  # events at 0..90 s: a run of 90 s
        t.note(1000.0 + s)
    assert t.silent_s(1000.0 + 90 + 61) is None  # busy for 90 s < 3 x 60 s
    for s in (120, 150, 180):
        t.note(1000.0 + s)
    assert t.silent_s(1000.0 + 180 + 59) is None  # silence below gap_s
    assert t.silent_s(1000.0 + 180 + 60) == 60  # busy 180 s = BUSY_WINDOWS x gap_s
    t.note(1000.0 + 400)  # after a long gap a new run starts
    assert t.silent_s(1000.0 + 400 + 600) is None
    assert BUSY_WINDOWS == 3
