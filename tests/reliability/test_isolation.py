"""Isolation: 10% of tenants whose engine fails randomly on every call must not make the
others' messages more expensive or slower.

The failing tenants run on a fake engine behind the engine Protocol ("flaky"): it wraps the
simulator's client and raises on a random half of every call (connect, heartbeat, is_paired,
stop, simulate...), so those tenants crash-loop through backoff for the whole measurement (a
high max_failures keeps them from parking). The healthy 90% ingest a fixed number of messages
in closed loops (offer a batch, wait until the writer has committed it, repeat).

What is judged is the healthy tenants' CPU time per message, not wall-clock throughput (which
on a shared machine measures the neighbours). The process CPU (`time.process_time`: every
thread, the SQLite one included) is split by phase: an idle phase with only the failing
tenants at work gives their own cost per call; the ingest phase's CPU minus that cost times
the calls they made meanwhile, divided by the messages, is the healthy tenants' cost per
message. Their enqueue-to-commit latency (simulate call to the writer's commit callback) is
reported beside it.

Two variants:
- realistic: the failing tenants at the default backoff and heartbeat (what a deployment runs):
  the median over back-to-back pairs (clean, flaky; order alternating) of CPU per message
  flaky/clean must stay within 10%;
- stress (labelled, informational): a 10-50 ms backoff and a 50 ms heartbeat, a crash-loop
  rate no configuration produces; its ratio is printed, only gross breakage fails it.
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

pytestmark = pytest.mark.timeout(scale(240, 900))

TENANTS = scale(20, 50)
FLAKY = TENANTS // 10
MESSAGES = scale(20_000, 60_000)  # per ingest phase
IDLE_S = scale(1.0, 2.0)
PAIRS = scale(3, 5)
BATCH = 200
TOLERANCE = 0.10
REALISTIC: dict[str, str] = {}  # the defaults: backoff 2-300 s, heartbeat 30 s
STRESS = {
    "OXYD_SUPERVISOR_BACKOFF_BASE_S": "0.01",
    "OXYD_SUPERVISOR_BACKOFF_CAP_S": "0.05",
    "OXYD_SUPERVISOR_HEARTBEAT_S": "0.05",
}


class FlakyClient:
    """A simulator client whose every call fails at random (probability `p`)."""

    def __init__(self, inner: Any, sink, rng: random.Random, p: float) -> None:
        self.inner, self.sink, self.rng, self.p = inner, sink, rng, p
        self.calls = self.failures = 0
        self.armed = False  # off while the tenant is added; armed once all exist

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


async def _app(tmp_path, name: str, flaky: bool, variant: dict[str, str]):
    cfg = load(
        env={
            "OXYD_DATA_DIR": str(tmp_path / name),
            "OXYD_SUPERVISOR_MAX_FAILURES": "1000000",
            "OXYD_SUPERVISOR_STOP_GRACE_S": "2",
            **variant,
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


class Commits:
    """The writer's commit callback, observed: wakes the producer of each committed tenant."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self.inner = writer._on_commit
        self.wake: dict[str, asyncio.Event] = {}
        writer._on_commit = self

    def __call__(self, stored_by_tenant: dict[str, int]) -> None:
        self.inner(stored_by_tenant)
        for tid in stored_by_tenant:
            ev = self.wake.get(tid)
            if ev is not None:
                ev.set()

    def close(self) -> None:
        self.writer._on_commit = self.inner


async def _measure(app, healthy: list[str], bad: list[str]) -> dict[str, Any]:
    """The idle phase (only the failing tenants at work), then MESSAGES ingested by the
    healthy ones: CPU per healthy message and enqueue-to-commit latencies."""
    sup = app.supervisor
    sim = app.engines["simulator"]
    commits = Commits(app.writer)
    stop = False
    chaos_calls = 0
    budget = MESSAGES // BATCH
    latencies_ms: list[float] = []

    async def chaos(tid: str) -> None:
        # The other 10% are driven in both configurations (calls that ingest nothing, so the
        # writer's load is the same): on the flaky engine they fail at random.
        nonlocal chaos_calls
        while not stop:
            try:
                await sup.simulate(tid, {"action": "fail_connects", "count": 0})
            except Exception:
                pass
            chaos_calls += 1
            await asyncio.sleep(0.005)

    async def producer(tid: str) -> None:
        nonlocal budget
        client = sim.clients[tid]
        t = sup.runners[tid].t
        wake = commits.wake[tid] = asyncio.Event()
        n = 0
        while budget > 0:
            budget -= 1
            n += 1
            target = t.messages_stored + BATCH
            wake.clear()
            t0 = time.perf_counter()
            await client.simulate(
                {"action": "message", "chat": f"1555{n % 20:07d}", "text": "m", "count": BATCH}
            )
            while t.messages_stored < target:
                await wake.wait()
                wake.clear()
            latencies_ms.append((time.perf_counter() - t0) * 1000)

    version0 = sup.version
    chaos_tasks = [asyncio.create_task(chaos(t)) for t in bad]
    try:
        cpu0, wall0, calls0 = time.process_time(), time.perf_counter(), chaos_calls
        await asyncio.sleep(IDLE_S)  # a fixed phase: the failing tenants' own cost per call
        cpu1, wall1, calls1 = time.process_time(), time.perf_counter(), chaos_calls
        before = sum(sup.runners[t].t.messages_stored for t in healthy)
        await asyncio.gather(*(producer(t) for t in healthy))
        cpu2, wall2, calls2 = time.process_time(), time.perf_counter(), chaos_calls
        stored = sum(sup.runners[t].t.messages_stored for t in healthy) - before
    finally:
        stop = True
        await asyncio.gather(*chaos_tasks, return_exceptions=True)
        commits.close()
    idle_cpu_per_s = (cpu1 - cpu0) / (wall1 - wall0)
    # The failing tenants' cost goes with their calls, not with time: while the ingest keeps
    # the loop busy they make fewer calls a second than in the idle phase (fewer still on a
    # busy machine), so a per-second rate would subtract work that never ran. The idle
    # phase's CPU per call (its timers included) times the calls made during the ingest.
    cpu_per_call = (cpu1 - cpu0) / max(1, calls1 - calls0)
    ingest_cpu_s = (cpu2 - cpu1) - cpu_per_call * (calls2 - calls1)
    lat = sorted(latencies_ms)
    info: dict[str, Any] = {
        "cpu_us_per_msg": ingest_cpu_s / stored * 1e6,
        "idle_cpu_share": idle_cpu_per_s,
        "msgs_per_s": stored / (wall2 - wall1),
        "lat_p50_ms": lat[len(lat) // 2],
        "lat_p95_ms": lat[int(len(lat) * 0.95)],
        "stored": stored,
        "chaos_calls": chaos_calls,
        "chaos_calls_in_ingest": calls2 - calls1,
        "state_changes": sup.version - version0,
    }
    if "flaky" in app.engines:
        eng = app.engines["flaky"]
        info["engine_failures"] = sum(c.failures for c in eng.clients.values())
    return info


async def _pairs(tmp_path, label: str, variant: dict[str, str], n: int, notes: list[str]):
    """n back-to-back (clean, flaky) measurements, the order alternating so drift on the
    machine favours neither."""
    pairs: list[tuple[dict, dict]] = []
    for r in range(n):
        got: dict[bool, dict] = {}
        for flaky in (False, True) if r % 2 == 0 else (True, False):
            name = f"{label}{len(notes)}{'f' if flaky else 'c'}"
            app, healthy, bad = await _app(tmp_path, name, flaky, variant)
            try:
                info = await _measure(app, healthy, bad)
                # Nothing lost, and the healthy tenants never left "connected".
                assert info["stored"] == MESSAGES // BATCH * BATCH, info
                for tid in healthy:
                    assert app.supervisor.runners[tid].t.state is State.CONNECTED
                if flaky:  # the chaos was real
                    assert info["engine_failures"] > 0, info
            finally:
                await oxyd_app.stop(app)
            got[flaky] = info
            notes.append(
                f"{label} pair {r + 1} {'flaky' if flaky else 'clean'}: "
                + ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()
                )
            )
        pairs.append((got[False], got[True]))
    return pairs


def _ratio(pairs, key: str) -> float:
    """Median over pairs of flaky/clean: above 1 means the failing tenants cost the others."""
    return statistics.median(f[key] / c[key] for c, f in pairs)


async def test_failing_tenants_do_not_make_the_others_messages_dearer(tmp_path):
    notes: list[str] = []
    pairs = await _pairs(tmp_path, "realistic", REALISTIC, PAIRS, notes)
    for _ in range(2):
        if _ratio(pairs, "cpu_us_per_msg") <= 1 + TOLERANCE:
            break
        # Documented retry (tests/reliability/README.md): on a noisy machine one pair's CPU
        # per message moves by up to 20%; another set, and the median over all pairs decides.
        notes.append(f"median CPU ratio {_ratio(pairs, 'cpu_us_per_msg'):.3f}: one more set")
        pairs += await _pairs(tmp_path, "realistic", REALISTIC, PAIRS, notes)
    cpu = _ratio(pairs, "cpu_us_per_msg")
    p50 = _ratio(pairs, "lat_p50_ms")
    p95 = _ratio(pairs, "lat_p95_ms")
    notes.append(
        f"realistic, {FLAKY}/{TENANTS} tenants failing at the default backoff: CPU per healthy"
        f" message flaky/clean {cpu:.3f} (median of {len(pairs)} pairs; limit"
        f" {1 + TOLERANCE:.2f}); enqueue-to-commit p50 {p50:.3f}, p95 {p95:.3f}"
    )
    print("\n".join(notes))
    assert cpu <= 1 + TOLERANCE, "\n".join(notes)


async def test_stress_crash_loop_figure(tmp_path):
    """Labelled stress variant: failing tenants crash-looping every 10-50 ms. Its figure is
    reported, not judged tightly (no deployment runs this); only a gross regression fails."""
    notes: list[str] = []
    pairs = await _pairs(tmp_path, "stress", STRESS, 1 if PAIRS < 5 else 3, notes)
    cpu = _ratio(pairs, "cpu_us_per_msg")
    p50 = _ratio(pairs, "lat_p50_ms")
    changes = statistics.median(f["state_changes"] for _, f in pairs)
    notes.append(
        f"STRESS (informational), {FLAKY}/{TENANTS} tenants crash-looping at a 10-50 ms backoff"
        f" ({changes:.0f} state changes per measurement): CPU per healthy message flaky/clean"
        f" {cpu:.3f}; enqueue-to-commit p50 {p50:.3f}"
    )
    print("\n".join(notes))
    assert cpu <= 3.0, "\n".join(notes)
