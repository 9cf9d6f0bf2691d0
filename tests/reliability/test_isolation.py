"""Isolation: 10% of tenants whose engine fails randomly on every call must not slow the others.

The failing tenants run on a fake engine behind the engine Protocol ("flaky"): it wraps the
simulator's client and raises on a random half of every call (connect, heartbeat, is_paired,
stop, simulate...), so those tenants crash-loop through backoff for the whole measurement (a
high max_failures keeps them from parking). The healthy 90% ingest in closed loops (offer a
batch per tenant, wait for the writer to commit it, repeat) for a fixed window; the messages
committed in that window are the throughput.

Both configurations are measured in the same test, in back-to-back pairs (the order alternates
from pair to pair), so machine noise and drift hit both alike; the verdict is the median of the
per-pair ratios flaky/clean (best-of-3 proved fragile: one lucky clean round decides it). The
tolerance is the issue's 10%. Retry policy (documented in README.md): if the median is below
0.9, one more full set of pairs is run and the median over all pairs decides.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import pytest
from reliakit import scale, until

from oxyd import app as oxyd_app
from oxyd import model as m
from oxyd.clock import RealClock
from oxyd.config import load
from oxyd.engine import EngineError
from oxyd.model import State
from oxyd.simulator.engine import SimulatorEngine

pytestmark = pytest.mark.timeout(scale(170, 900))

TENANTS = scale(20, 50)
FLAKY = TENANTS // 10
WINDOW_S = scale(2.0, 5.0)
ROUNDS = 5  # pairs per set: the median of 5 holds the 10% tolerance on a noisy 2-core box
BATCH = 200
TOLERANCE = 0.10


class FlakyClient:
    """A simulator client whose every call fails at random (probability `p`)."""

    def __init__(self, inner: Any, sink, rng: random.Random, p: float) -> None:
        self.inner, self.sink, self.rng, self.p = inner, sink, rng, p
        self.calls = self.failures = 0
        self.armed = False  # off while the tenant is added (see the bug note in README.md)

    def _roll(self, name: str) -> None:
        self.calls += 1
        if self.armed and self.rng.random() < self.p:
            self.failures += 1
            raise EngineError(f"flaky engine: {name} failed")

    async def is_paired(self) -> bool:
        self._roll("is_paired")
        return await self.inner.is_paired()

    async def connect(self) -> None:
        self._roll("connect")
        await self.inner.connect()

    async def heartbeat(self) -> bool:
        self._roll("heartbeat")
        if self.armed and self.rng.random() < self.p:
            # The session dies under the client's feet, as a crashing library's would.
            self.failures += 1
            self.sink(m.ClientDead("flaky engine: session died"))
        return await self.inner.heartbeat()

    async def send(self, to, text, media):
        self._roll("send")
        return await self.inner.send(to, text, media)

    async def pair(self, phone):
        self._roll("pair")
        await self.inner.pair(phone)

    async def logout(self) -> None:
        self._roll("logout")
        await self.inner.logout()

    async def stop(self) -> None:
        self._roll("stop")
        await self.inner.stop()

    async def remove(self) -> None:
        await self.inner.remove()

    async def simulate(self, action):
        self._roll("simulate")
        return await self.inner.simulate(action)


class FlakyEngine:
    """Registered as engine "flaky": the engine Protocol around a private simulator engine."""

    name = "flaky"

    def __init__(self, inner: SimulatorEngine, p: float = 0.5) -> None:
        self.inner = inner
        self.p = p
        self.rng = random.Random(7)
        self.clients: dict[str, FlakyClient] = {}

    def client(self, tenant_id: str, sink) -> FlakyClient:
        c = FlakyClient(self.inner.client(tenant_id, sink), sink, self.rng, self.p)
        self.clients[tenant_id] = c
        return c

    async def close(self) -> None:
        await self.inner.close()


async def _app(tmp_path, name: str, flaky: bool):
    cfg = load(
        env={
            "OXYD_DATA_DIR": str(tmp_path / name),
            "OXYD_SUPERVISOR_BACKOFF_BASE_S": "0.01",
            "OXYD_SUPERVISOR_BACKOFF_CAP_S": "0.05",
            "OXYD_SUPERVISOR_HEARTBEAT_S": "0.05",
            "OXYD_SUPERVISOR_MAX_FAILURES": "1000000",
            "OXYD_SUPERVISOR_STOP_GRACE_S": "2",
        }
    )
    clock = RealClock()
    sim = SimulatorEngine(cfg.data_dir, cfg.simulator, clock)
    engines: dict[str, Any] = {"simulator": sim}
    if flaky:
        engines["flaky"] = FlakyEngine(SimulatorEngine(cfg.data_dir, cfg.simulator, clock))
    app = await oxyd_app.build(cfg, clock, engines)
    await oxyd_app.start(app)
    healthy = [f"h{i:02d}" for i in range(TENANTS - FLAKY)]
    for tid in healthy:
        await app.supervisor.add(tid, "simulator")
    bad = [f"f{i:02d}" for i in range(FLAKY)]
    for tid in bad:
        await app.supervisor.add(tid, "flaky" if flaky else "simulator")
    if flaky:
        for c in engines["flaky"].clients.values():
            c.armed = True
    await until(
        lambda: all(app.supervisor.runners[t].t.state is State.CONNECTED for t in healthy),
        30,
        "healthy tenants connected",
    )
    return app, healthy, bad


async def _measure(app, healthy: list[str], bad: list[str], flaky: bool) -> tuple[float, dict]:
    """Messages of the healthy tenants committed per second during WINDOW_S."""
    sup = app.supervisor
    sim = app.engines["simulator"]
    stop = False
    chaos_calls = 0

    async def producer(tid: str) -> None:
        # Closed loop with two batches in flight: offer the next batch once all but one of
        # this tenant's batches are committed.
        client = sim.clients[tid]
        t = sup.runners[tid].t
        offered = t.messages_stored
        n = 0
        while not stop:
            if t.messages_stored >= offered - BATCH:
                n += 1
                await client.simulate(
                    {"action": "message", "chat": f"1555{n % 20:07d}", "text": "m", "count": BATCH}
                )
                offered += BATCH
            await asyncio.sleep(0.001)

    async def chaos(tid: str) -> None:
        # The other 10% are driven too, in both configurations (calls that ingest nothing, so
        # the writer's load is the same): on the flaky engine they fail at random.
        nonlocal chaos_calls
        while not stop:
            try:
                await sup.simulate(tid, {"action": "fail_connects", "count": 0})
            except Exception:
                pass
            chaos_calls += 1
            await asyncio.sleep(0.005)

    before = sum(sup.runners[t].t.messages_stored for t in healthy)
    tasks = [asyncio.create_task(producer(t)) for t in healthy]
    tasks += [asyncio.create_task(chaos(t)) for t in bad]
    version0 = sup.version
    t0 = time.monotonic()
    await asyncio.sleep(WINDOW_S)  # a fixed measurement window, not a wait for a condition
    after = sum(sup.runners[t].t.messages_stored for t in healthy)
    elapsed = time.monotonic() - t0
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    info = {
        "states": dict(sup.counts_by_state()),
        "chaos_calls": chaos_calls,
        "state_changes": sup.version - version0,
    }
    if flaky:
        eng = app.engines["flaky"]
        info["engine_calls"] = sum(c.calls for c in eng.clients.values())
        info["engine_failures"] = sum(c.failures for c in eng.clients.values())
    return (after - before) / elapsed, info


async def test_failing_tenants_do_not_slow_the_others(tmp_path):
    pairs: list[tuple[float, float]] = []  # (clean, flaky) msg/s, measured back to back
    notes: list[str] = []
    sets = 0

    async def one_set() -> None:
        nonlocal sets
        sets += 1
        for r in range(ROUNDS):
            got: dict[bool, float] = {}
            # Alternate which goes first, so drift on the machine favours neither.
            for flaky in (False, True) if r % 2 == 0 else (True, False):
                name = f"s{sets}r{r}{'f' if flaky else 'c'}"
                app, healthy, bad = await _app(tmp_path, name, flaky)
                try:
                    rate, info = await _measure(app, healthy, bad, flaky)
                    if flaky:
                        # The chaos was real: the failing tenants crash-looped meanwhile.
                        assert info["engine_failures"] > 20, info
                        assert info["state_changes"] > 10, info
                        for tid in healthy:
                            assert app.supervisor.runners[tid].t.state is State.CONNECTED
                finally:
                    await oxyd_app.stop(app)
                got[flaky] = rate
                notes.append(
                    f"set {sets} round {r + 1} {'flaky' if flaky else 'clean'}:"
                    f" {rate:.0f} msg/s {info}"
                )
            pairs.append((got[False], got[True]))

    def verdict() -> float:
        return statistics.median(f / c for c, f in pairs)

    await one_set()
    if verdict() < 1 - TOLERANCE:  # documented retry: one more full set on a noisy machine
        notes.append(f"median ratio {verdict():.3f} below {1 - TOLERANCE}: one more set")
        await one_set()
    ratio = verdict()
    best = max(f for _, f in pairs) / max(c for c, _ in pairs)
    notes.append(
        f"{FLAKY}/{TENANTS} tenants failing: median paired ratio {ratio:.3f}"
        f" (best-of ratio {best:.3f}; clean {[round(c) for c, _ in pairs]},"
        f" flaky {[round(f) for _, f in pairs]} msg/s)"
    )
    print("\n".join(notes))
    assert ratio >= 1 - TOLERANCE, "\n".join(notes)
