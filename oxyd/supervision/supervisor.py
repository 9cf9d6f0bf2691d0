"""The supervisor: one Runner per tenant, restore at start, operator commands, health sweep.

It holds the live Tenant objects (the HTTP layer reads them, never the database, so listing
1,000 tenants costs no query) and persists every state change with its webhook rows
(states.py); operator commands are commands.py, the health sweep health.py.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from oxyd import datadir
from oxyd import model as m
from oxyd.backoff import ConnectGate
from oxyd.clock import Clock
from oxyd.config import Config
from oxyd.engine import Engine
from oxyd.model import IDLE, PARKED, State
from oxyd.ratelimit import TokenBucket
from oxyd.sender import Sender
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.store.writer import Writer
from oxyd.supervision.commands import Commands
from oxyd.supervision.errors import TenantError
from oxyd.supervision.health import HealthSweep
from oxyd.supervision.runner import Runner
from oxyd.supervision.states import StateRecords

T = TypeVar("T")


class Supervisor(StateRecords, HealthSweep, Commands):
    def __init__(
        self,
        cfg: Config,
        store: Store,
        writer: Writer,
        subs: outbox.Subscriptions,
        clock: Clock,
        engines: dict[str, Engine],
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.writer = writer
        self.subs = subs
        self.clock = clock
        self.engines = engines
        self.rng = rng or random.Random()
        self.runners: dict[str, Runner] = {}
        self.gate = ConnectGate(cfg.supervisor.connect_concurrency)
        self.reconnects: Counter[str] = Counter()
        self.zombies: Counter[str] = Counter()
        self.listeners: set[asyncio.Queue] = set()
        self.last_health: dict[str, Any] | None = None
        self.running = False
        self.broken: str | None = None
        self.kick: Callable[[], None] = lambda: None  # wakes the webhook dispatcher
        self.version = 0  # bumped on every published change; caches key on it
        self._unsaved: dict[str, list] = {}  # tenant -> webhook rows of a failed state write
        self._restart_buckets: dict[str, TokenBucket] = {}
        self._saver: asyncio.Task | None = None
        # Cluster mode: tenants not to restore at start (a move of theirs is unfinished), and
        # fields added to every tenant object ("node").
        self.skip: Callable[[str], bool] = lambda tenant_id: False
        self.extra_fields: dict[str, Any] = {}
        self.sending = Sender(self)

    # ---- lifecycle ----

    async def start(self) -> None:
        """Restore: every tenant row, plus every tenant folder without a row (adopted)."""
        rows = {t.id: t for t in await self.store.tenants()}
        folders = await asyncio.to_thread(datadir.tenant_folders, self.cfg.data_dir)
        for tid in folders:
            if tid in rows:
                continue
            engine = await asyncio.to_thread(_engine_of_folder, self.cfg.data_dir, tid)
            t = m.Tenant(
                id=tid,
                engine=engine,
                state=State.NEW,
                state_since_ms=self.clock.now_ms(),
                created_at_ms=self.clock.now_ms(),
            )
            await self.store.add_tenant(t)
            rows[tid] = t
            logger.bind(tenant=tid).info("adopted tenant folder without a row ({} engine)", engine)
        for tid, wh in (await self.store.webhooks()).items():
            self.subs.set_tenant(tid, wh["events"])
        for t in rows.values():
            if self.skip(t.id):
                continue
            if t.engine not in self.engines:
                logger.bind(tenant=t.id).error("unknown engine {!r}; tenant left idle", t.engine)
                continue
            if t.state not in IDLE and t.state is not State.BANNED:
                # Until its connect succeeds, a restored tenant is not "connected", whatever it
                # was when the daemon stopped (in memory only: the row keeps the last truth).
                t.state, t.state_since_ms = State.CONNECTING, self.clock.now_ms()
            runner = Runner(self, t)
            self.runners[t.id] = runner
            runner.spawn("restore")
        self.running = True
        await self.sending.start()
        logger.info(
            "restoring {} tenants ({} parked, {} stopped, {} new)",
            len(rows),
            sum(t.state in PARKED for t in rows.values()),
            sum(t.state is State.STOPPED for t in rows.values()),
            sum(t.state is State.NEW for t in rows.values()),
        )

    async def stop(self) -> None:
        """Cancel every tenant task and stop every client, without persisting "stopped": the
        next start restores each tenant to what it was doing."""
        self.running = False
        await self.sending.stop()
        if self._saver is not None:
            self._saver.cancel()
        runners = list(self.runners.values())
        await asyncio.gather(*(r.cancel() for r in runners))
        grace_s = self.cfg.supervisor.stop_grace_s

        async def stop_one(r: Runner) -> None:
            try:
                await asyncio.wait_for(r.client.stop(), grace_s)
            except Exception as e:
                r.log.warning("client did not stop cleanly: {!r}", e)
            # Data that arrived before the stop is still stored.
            data = [
                e
                for e in r.events
                if isinstance(e, (m.Message, m.Receipt, m.HistorySync, m.Contact, *m.PEOPLE_DATA))
            ]
            while data:
                taken = self.writer.offer(r.t.id, data)
                data = data[taken:]
                if not data:
                    break
                try:
                    # A writer that cannot write (disk full) must not hold the stop forever.
                    await asyncio.wait_for(self.writer.wait_room(), self.writer.drain_timeout_s)
                except TimeoutError:
                    r.log.error(
                        "store writer full until the stop timeout; {} events not stored", len(data)
                    )
                    break
            r.events.clear()

        await asyncio.gather(*(stop_one(r) for r in runners))

    def runner_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Runner._life handles every tenant-level error; reaching here is a supervisor bug.
            self.broken = f"{task.get_name()}: {type(exc).__name__}: {exc}"
            logger.opt(exception=exc).critical("supervisor bug in {}", task.get_name())

    def on_stored(self, stored_by_tenant: dict[str, int]) -> None:
        """Writer callback after each commit: keeps live counters without a query."""
        for tid, n in stored_by_tenant.items():
            r = self.runners.get(tid)
            if r is not None:
                r.t.messages_stored += n

    # ---- shared services for runners ----

    def send_bucket(self) -> TokenBucket:
        return TokenBucket(self.cfg.send.rate_per_min / 60.0, self.cfg.send.burst, self.clock)

    async def bounded(self, aw: Awaitable[T], timeout_s: float) -> T:
        """Await with a deadline on our clock (fake in tests); raises TimeoutError."""
        task = asyncio.ensure_future(aw)
        sleeper = asyncio.ensure_future(self.clock.sleep(timeout_s))
        try:
            await asyncio.wait({task, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        if not task.done():
            task.cancel()
            raise TimeoutError
        return task.result()

    def publish(self, event: dict[str, Any]) -> None:
        self.version += 1
        for q in list(self.listeners):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self.listeners.discard(q)  # a listener that does not read is dropped

    # ---- reads ----

    def tenant_json(self, r: Runner) -> dict[str, Any]:
        r.t.queue_depth = r.queue_depth
        data = r.t.as_json()
        if self.extra_fields:
            data.update(self.extra_fields)
        return data

    def runner(self, tenant_id: str) -> Runner:
        r = self.runners.get(tenant_id)
        if r is None:
            raise TenantError("tenant_not_found", f"no tenant {tenant_id!r}", 404)
        return r

    def tenants(self) -> list[dict[str, Any]]:
        return [self.tenant_json(self.runners[k]) for k in sorted(self.runners)]

    def counts_by_state(self) -> Counter[str]:
        return Counter(str(r.t.state) for r in self.runners.values())


def _engine_of_folder(data_dir: Path, tenant_id: str) -> str:
    folder = datadir.tenant_dir(data_dir, tenant_id)
    return "simulator" if (folder / "simulator.json").exists() else "neonize"
