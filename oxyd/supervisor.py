"""The supervisor: one Runner per tenant, restore at start, operator commands, health sweep.

It holds the live Tenant objects (the HTTP layer reads them, never the database, so listing
1,000 tenants costs no query) and persists every state change with its webhook rows.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from oxyd import datadir
from oxyd import model as m
from oxyd.clock import Clock
from oxyd.config import Config
from oxyd.engine import Engine
from oxyd.model import IDLE, PARKED, State
from oxyd.ratelimit import TokenBucket
from oxyd.runner import ACTIONS, Runner
from oxyd.sender import Sender
from oxyd.store import faults, outbox
from oxyd.store.db import Store
from oxyd.store.writer import Writer

T = TypeVar("T")


class TenantError(Exception):
    """An operator request that cannot be done; `code` is the API error code."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class RateLimited(TenantError):
    def __init__(
        self, retry_after_s: float, message: str = "send rate limit reached; retry later"
    ) -> None:
        super().__init__("rate_limited", message, 429)
        self.retry_after_s = retry_after_s


# Operator restarts per tenant: each one tears down a WhatsApp session and dials again, and a
# script looping on POST .../restart would look like a reconnect storm to WhatsApp.
RESTART_BURST = 3
RESTARTS_PER_MIN = 6


class Supervisor:
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
        from oxyd.backoff import ConnectGate

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

    def _clear_broken(self) -> None:
        """`broken` names a dead tenant task; once the health sweep has restarted every such
        task, readiness comes back by itself."""
        if self.broken is not None and all(
            r.running
            or r.task is None
            or not r.task.done()
            or r.task.cancelled()
            or r.task.exception() is None
            for r in self.runners.values()
        ):
            logger.info("every tenant task runs again: supervisor ready")
            self.broken = None

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

    async def persist(self, r: Runner, alert: str | None) -> None:
        t = r.t
        data = self.tenant_json(r)
        # Published before the write: the live feed must follow the in-memory state that
        # snapshots read, in order. Published after it, a slow write let a subscriber get a
        # snapshot that already showed a state and then that state's stale change event.
        self.publish({"type": "state", "tenant": t.id, "data": data})
        rows = outbox.rows(
            self.subs, t.id, "tenant.state", {**data, "reason": t.last_error}, t.state_since_ms
        )
        if alert:
            rows += outbox.rows(
                self.subs,
                t.id,
                alert,
                {
                    **data,
                    "reason": t.last_error,
                    "action": ACTIONS.get(t.state, "the client was rebuilt; watch for repeats"),
                },
                t.state_since_ms,
            )
        try:
            await self.store.save_state(t, rows)
        except Exception as e:
            if not faults.transient(e):
                raise
            # Disk full for a moment: the session is fine and the state is right in memory.
            # Killing the session (or counting a failure) over it would turn a storage hiccup
            # into an outage; the row is written as soon as the store takes writes again.
            self._defer_state(r, rows, e)
        else:
            if rows:
                self.kick()
        self.sending.state_changed(t.id)

    def _defer_state(self, r: Runner, rows: list, e: Exception) -> None:
        if r.t.id not in self._unsaved:
            r.log.warning("state write failed ({}); kept in memory, written once it works", e)
        self._unsaved.setdefault(r.t.id, []).extend(rows)
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_deferred(), name="oxyd-state-saver")

    async def _save_deferred(self) -> None:
        """Write the latest state of every tenant whose state write failed, with backoff,
        until all are written (their webhook rows with them)."""
        delay_s = 0.1
        while self._unsaved:
            await self.clock.sleep(delay_s)
            for tid in list(self._unsaved):
                r = self.runners.get(tid)
                rows = self._unsaved[tid]
                try:
                    if r is not None:
                        await self.store.save_state(r.t, rows)
                except Exception as e:
                    if not faults.transient(e):
                        logger.opt(exception=e).error("deferred state write of {} failed", tid)
                        self._unsaved.pop(tid, None)
                    continue
                self._unsaved.pop(tid, None)
                if rows:
                    self.kick()
                logger.bind(tenant=tid).info("deferred state written")
            delay_s = min(delay_s * 2, 5.0)

    @property
    def unsaved_states(self) -> int:
        """Tenants whose current state is not on disk yet (storage fault)."""
        return len(self._unsaved)

    async def zombie(self, r: Runner, silent_s: float, why: str = "no heartbeat or event") -> None:
        self.zombies[r.t.id] += 1
        r.log.warning("zombie: connected but {} for {:.0f}s; rebuilding", why, silent_s)
        data = {
            **self.tenant_json(r),
            "reason": f"{why} for {silent_s:.0f}s",
            "action": "the client was rebuilt; if it repeats, check the network",
        }
        rows = outbox.rows(self.subs, r.t.id, "alert.zombie", data, self.clock.now_ms())
        try:
            await self.store.append_outbox(rows)
        except Exception as e:
            if not faults.transient(e):
                raise
            self._defer_state(r, rows, e)  # the alert goes out with the next state write
            return
        self.kick()

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

    # ---- operator commands ----

    async def add(
        self, tenant_id: str, engine: str, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if engine not in self.engines:
            raise TenantError("invalid_engine", f"unknown engine {engine!r}", 400)
        if tenant_id in self.runners:
            raise TenantError("tenant_exists", f"tenant {tenant_id!r} exists already")
        now = self.clock.now_ms()
        t = m.Tenant(
            id=tenant_id, engine=engine, state=State.NEW, state_since_ms=now, created_at_ms=now
        )
        t.settings = {k: v for k, v in (settings or {}).items() if v != m.SETTINGS_DEFAULTS.get(k)}
        if not await self.store.add_tenant(t, fresh=True):
            raise TenantError("tenant_exists", f"tenant {tenant_id!r} exists already")
        await asyncio.to_thread(_mkdir_private, datadir.tenant_dir(self.cfg.data_dir, tenant_id))
        r = Runner(self, t)
        self.runners[tenant_id] = r
        logger.bind(tenant=tenant_id).info("tenant added ({} engine)", engine)
        async with r.lock:
            if await r.paired():  # simulator tenants start paired
                # The answer says what happens next: it is connecting by itself, not "new".
                await r.set(State.CONNECTING, None)
                r.spawn("connect")
        return self.tenant_json(r)

    async def remove(self, tenant_id: str, *, purge: bool) -> None:
        r = self.runner(tenant_id)
        async with r.lock:
            await r.cancel()
            try:
                if await r.client.is_paired():
                    await r.client.logout()
            except Exception as e:
                r.log.warning("logout during removal failed: {}", e)
            await r.client.stop()
            await r.client.remove()
            await self.sending.forget(tenant_id)
            self.runners.pop(tenant_id, None)
            self._restart_buckets.pop(tenant_id, None)
            self.subs.remove_tenant(tenant_id)
            await self.store.remove_tenant(tenant_id, purge=purge)
            await asyncio.to_thread(
                shutil.rmtree, datadir.tenant_dir(self.cfg.data_dir, tenant_id), True
            )
        r.log.info("tenant removed{}", " and its messages purged" if purge else "")
        self.publish({"type": "removed", "tenant": tenant_id})

    async def start_tenant(self, tenant_id: str) -> dict[str, Any]:
        r = self.runner(tenant_id)
        async with r.lock:
            if r.running and r.t.state not in IDLE and r.t.state is not State.BANNED:
                return self.tenant_json(r)
            await r.cancel()
            await self._fresh_start(r)
        return self.tenant_json(r)

    async def restart_tenant(self, tenant_id: str, *, limited: bool = False) -> dict[str, Any]:
        """`limited`: an operator's request (the API), held to RESTARTS_PER_MIN per tenant;
        the health sweep's restarts are not."""
        r = self.runner(tenant_id)
        if limited:
            bucket = self._restart_buckets.get(tenant_id)
            if bucket is None:
                bucket = TokenBucket(RESTARTS_PER_MIN / 60.0, RESTART_BURST, self.clock)
                self._restart_buckets[tenant_id] = bucket
            wait_s = bucket.take()
            if wait_s > 0:
                raise RateLimited(
                    wait_s,
                    f"at most {RESTARTS_PER_MIN} restarts a minute per tenant; retry later",
                )
        async with r.lock:
            await r.cancel()
            await r._stop_client()
            await self._fresh_start(r)
        return self.tenant_json(r)

    async def _fresh_start(self, r: Runner) -> None:
        paired = await r.paired()
        if paired is None:
            return  # parked: the store cannot be read
        if not paired:
            await r.set(State.NEW, "not paired: pair it first")
            return
        r.t.failures = r.own_failures = 0
        r.t.ban_expires_ms = None
        await r.set(State.CONNECTING, None)
        r.spawn("connect")

    async def stop_tenant(self, tenant_id: str) -> dict[str, Any]:
        r = self.runner(tenant_id)
        async with r.lock:
            await r.cancel()
            await r._stop_client()
            if r.t.state not in PARKED and r.t.state is not State.NEW:
                await r.set(State.STOPPED, "stopped by an operator")
        return self.tenant_json(r)

    async def pair(self, tenant_id: str, phone: str | None) -> dict[str, Any]:
        r = self.runner(tenant_id)
        async with r.lock:
            if r.t.state is State.PAIRING and r.running:
                raise TenantError("pairing_in_progress", "pairing is already in progress")
            if await r.paired():
                raise TenantError(
                    "already_paired", "this tenant is paired; log it out first to pair again"
                )
            await r.cancel()
            r.spawn("pair", phone)
        return self.tenant_json(r)

    def pairing(self, tenant_id: str) -> dict[str, Any]:
        return dict(self.runner(tenant_id).pairing)

    async def logout(self, tenant_id: str) -> dict[str, Any]:
        r = self.runner(tenant_id)
        async with r.lock:
            await r.cancel()
            try:
                await r.client.logout()
            except Exception as e:
                r.log.warning("logout: {}", e)
                await r._stop_client()
            await r.set(State.LOGGED_OUT, "logged out by an operator")
        return self.tenant_json(r)

    async def update_settings(self, tenant_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge validated settings (oxyd/http/settings.py), persist, hand them to the client.
        Values equal to the default are not stored, so the row says what was changed."""
        r = self.runner(tenant_id)
        async with r.lock:
            merged = {**r.t.settings, **changes}
            settings = {k: v for k, v in merged.items() if v != m.SETTINGS_DEFAULTS.get(k)}
            await self.store.save_settings(tenant_id, settings)
            r.t.settings = settings
            try:
                await r.client.configure(settings)
            except Exception as e:  # applied at the next connect anyway
                r.log.warning("settings saved; the client could not apply them now: {}", e)
        self.publish({"type": "state", "tenant": tenant_id, "data": self.tenant_json(r)})
        return self.tenant_json(r)

    async def simulate(self, tenant_id: str, action: dict[str, Any]) -> dict[str, Any]:
        r = self.runner(tenant_id)
        simulate = getattr(r.client, "simulate", None)
        if simulate is None:
            raise TenantError("not_simulated", "only simulator tenants can be simulated", 400)
        return await simulate(action)

    # ---- health ----

    async def health_sweep(self) -> dict[str, Any]:
        """Counts, and catches what the per-tenant heartbeat cannot: a tenant task that died
        or hangs while its state says it is working."""
        cfg = self.cfg.supervisor
        now = self.clock.monotonic()
        healthy = reconnected = failed = 0
        alerts: list[dict[str, Any]] = []
        for tid, r in list(self.runners.items()):
            st = r.t.state
            if st in PARKED:
                failed += 1
                alerts.append(
                    {
                        "tenant": tid,
                        "state": str(st),
                        "reason": r.t.last_error,
                        "action": ACTIONS.get(st),
                    }
                )
                continue
            if st in IDLE or (st is State.BANNED and r.running):
                continue
            alive = max(r.last_ok_mono, r.last_event_mono)
            stuck = st is State.CONNECTED and now - alive > cfg.zombie_after_s + cfg.heartbeat_s
            if not r.running or stuck:
                why = "tenant task not running" if not r.running else "heartbeat stalled"
                r.log.warning("health sweep: {} while {}; restarting", why, st)
                try:
                    await self.restart_tenant(tid)
                except Exception as e:  # one tenant's trouble never ends the sweep
                    r.log.opt(exception=e).error("health sweep could not restart it: {}", e)
                    why = f"{why}; restart failed: {e}"
                alerts.append(
                    {
                        "tenant": tid,
                        "state": str(st),
                        "reason": why,
                        "action": "restarted by the health sweep",
                    }
                )
                reconnected += 1
            elif st is State.CONNECTED:
                healthy += 1
        self._clear_broken()
        if self.writer.failing:
            alerts.append(
                {
                    "tenant": None,
                    "state": "storage",
                    "reason": self.writer.stats.last_error,
                    "action": "check free disk space and the data directory's"
                    " permissions; writes are retried, nothing is dropped",
                }
            )
        self.last_health = {
            "checked_at_ms": self.clock.now_ms(),
            "total": len(self.runners),
            "healthy": healthy,
            "reconnected": reconnected,
            "failed": failed,
            "by_state": dict(self.counts_by_state()),
            "alerts": alerts,
        }
        return self.last_health


def _engine_of_folder(data_dir: Path, tenant_id: str) -> str:
    folder = datadir.tenant_dir(data_dir, tenant_id)
    return "simulator" if (folder / "simulator.json").exists() else "neonize"


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
