"""Outages don't park everyone: a network-wide failure does not count toward max_failures, a
tenant's own failures still do, and after a 30-minute outage every tenant comes back by itself.
Fake clock, simulator engine, real SQLite."""

import pytest
from helpers import advance, advance_until, config, make_app, until

from oxyd import app as oxyd_app
from oxyd import outage
from oxyd.clock import FakeClock
from oxyd.model import State
from oxyd.simulator.session import MAX_COUNT

N = 10
CFG = {
    "SUPERVISOR_HEARTBEAT_S": "30",
    "SUPERVISOR_ZOMBIE_AFTER_S": "180",
    "SUPERVISOR_STABLE_AFTER_S": "60",
    "SUPERVISOR_BACKOFF_BASE_S": "2",
    "SUPERVISOR_BACKOFF_CAP_S": "300",
    # Low, so counting the outage's failures would park every tenant within minutes.
    "SUPERVISOR_MAX_FAILURES": "3",
}


@pytest.fixture
async def env(tmp_path):
    clock = FakeClock()
    app = await make_app(config(tmp_path, **CFG), clock)
    ids = [f"t{i:02d}" for i in range(N)]
    for tid in ids:
        await app.supervisor.add(tid, "simulator")
    runners = app.supervisor.runners
    await until(lambda: all(runners[t].t.state is State.CONNECTED for t in ids), what="up")
    yield app, clock, ids
    await oxyd_app.stop(app)


async def sim(app, tid, **action):
    return await app.supervisor.simulate(tid, action)


async def test_a_30_minute_outage_parks_nobody_and_everyone_comes_back(env):
    app, clock, ids = env
    sup = app.supervisor
    connects = sup.gate.total
    # The network goes: every connection drops and every reconnect fails until it is back.
    for tid in ids:
        await sim(app, tid, action="fail_connects", count=MAX_COUNT)
        await sim(app, tid, action="disconnect")
    await until(
        lambda: all(sup.runners[t].t.state is State.BACKOFF for t in ids), what="all backing off"
    )
    parked = []
    for _ in range(30 * 6):  # 30 minutes in 10 s steps
        await advance(clock, 10, step_s=10)
        parked += [t for t in ids if sup.runners[t].t.state in (State.FAILED,)]
        assert not parked, f"parked during the outage: {parked}"
    rs = [sup.runners[t] for t in ids]
    # Every failure paced the backoff (2, 4, ... 256, then the 300 s cap: ~12 in 30 min)...
    assert all(r.t.failures >= 8 for r in rs), [r.t.failures for r in rs]
    # ...so the outage was not hammered: about a dozen attempts per tenant, not hundreds.
    assert sup.gate.total - connects <= N * 15
    # Only the first failures, before the outage was visibly network-wide, counted.
    assert all(r.own_failures < 3 for r in rs), [r.own_failures for r in rs]

    # The network is back: everyone returns by itself within the backoff cap.
    back_ms = clock.now_ms()
    for tid in ids:
        await sim(app, tid, action="fail_connects", count=0)
    waits_s = [(r.t.next_attempt_ms - back_ms) / 1000 for r in rs if r.t.next_attempt_ms]
    assert waits_s and max(waits_s) <= 300, waits_s  # every next attempt within the cap
    await advance_until(clock, lambda: all(r.t.state is State.CONNECTED for r in rs), step_s=10)
    # Healthy for stable_after_s: both counters clear.
    await advance_until(clock, lambda: all(r.t.failures == 0 and r.own_failures == 0 for r in rs))


async def test_one_tenants_own_failures_still_park_it(env):
    app, clock, ids = env
    sup = app.supervisor
    bad = sup.runners[ids[0]]
    await sim(app, ids[0], action="fail_connects", count=MAX_COUNT)
    await sup.restart_tenant(ids[0])
    for _ in range(60):
        await advance(clock, 10, step_s=2)
        if bad.t.state is State.FAILED:
            break
    assert bad.t.state is State.FAILED
    assert bad.own_failures == 3 and bad.t.failures == 3
    assert "3 failed attempts in a row" in bad.t.last_error
    assert all(sup.runners[t].t.state is State.CONNECTED for t in ids[1:])


async def test_two_failing_of_many_is_not_an_outage(env):
    """Below MIN_TENANTS failing at once, failures are the tenants' own, whatever the share."""
    app, _clock, ids = env
    runners = app.supervisor.runners
    one, two = runners[ids[0]], runners[ids[1]]
    two.t.state = State.BACKOFF
    assert not outage.widespread(runners.values(), one)
    runners[ids[2]].t.state = State.RECONNECTING
    assert not outage.widespread(runners.values(), one)  # 3 of 10: not half
    for tid in ids[3:5]:
        runners[tid].t.state = State.BACKOFF
    assert outage.widespread(runners.values(), one)  # 5 of 10
    for tid in ids[5:]:
        runners[tid].t.state = State.STOPPED  # not active: not counted either way
    assert outage.widespread(runners.values(), one)
    for tid in ids[1:5]:
        runners[tid].t.state = State.CONNECTED
    assert not outage.widespread(runners.values(), one)
