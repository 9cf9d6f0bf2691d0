"""One tenant's life: connect, watch, back off, park. The supervisor owns one Runner per tenant.

Errors split three ways (as Home Assistant's config entries do): transient (back off and try
again), needs-a-person (park in a terminal state, persist, alert; never retried), and bugs
(log the traceback, count as a failed attempt, back off). Cancellation is always re-raised.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from loguru import logger

from oxyd import backoff, outage
from oxyd import model as m
from oxyd.backoff import Slot
from oxyd.config import SupervisorConfig
from oxyd.engine import StoreUnusable
from oxyd.liveness import Traffic
from oxyd.model import PARKED, State
from oxyd.supervision.host import Host
from oxyd.supervision.inbox import _DATA, Inbox
from oxyd.supervision.outcome import ACTIONS, Ended, check_end

__all__ = ["Host", "Runner"]


class Runner(Inbox):
    """One tenant's life (its inbox: inbox.py)."""

    def __init__(self, sup: Host, tenant: m.Tenant) -> None:
        self.sup = sup
        self.t = tenant
        self.log = logger.bind(tenant=tenant.id)
        self.events: deque[m.Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.client = sup.engines[tenant.engine].client(tenant.id, self._sink)
        self.task: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.pairing: dict[str, Any] = {"qr": None, "code": None, "expires_ms": None}
        self.last_event_mono = 0.0
        self.last_ok_mono = 0.0
        self.bucket = sup.send_bucket()
        self.traffic = Traffic(sup.cfg.supervisor.zombie_after_s)
        # Failures that count toward max_failures: the tenant's own, not a network-wide
        # outage's (oxyd/outage.py). t.failures counts every one: it paces the backoff. In
        # memory only: a restart gives each tenant a fresh breaker.
        self.own_failures = 0
        self._store_checked = False
        self.in_session = False  # connected: pausing the client is allowed (not while pairing)
        self.pauses = 0  # times the engine was asked to stop receiving (back-pressure)
        self._slot: Slot | None = None  # the connect slot while an attempt holds it

    # ---- task control ----

    def spawn(self, mode: str, phone: str | None = None) -> None:
        self.task = asyncio.create_task(self._life(mode, phone), name=f"tenant-{self.t.id}")
        self.task.add_done_callback(self.sup.runner_done)

    async def cancel(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    # ---- life ----

    async def _life(self, mode: str, phone: str | None) -> None:
        if mode == "pair":
            if not await self._pair(phone):
                return
        elif mode == "restore":
            if self.t.state in PARKED or self.t.state is State.STOPPED:
                return
            paired = await self.paired()
            if paired is None:
                return
            if not paired:
                if self.t.state is not State.NEW:
                    await self.set(State.NEW, "device store missing or empty: pair it")
                return
        await self._connect_loop()

    async def paired(self) -> bool | None:
        """Whether the device store holds a paired device; None after parking the tenant when
        the store cannot be read (corrupt, unreadable): a person must look, and no other tenant
        is affected."""
        try:
            if getattr(self.sup.engines.get(self.t.engine), "paired_state_in_db", False):
                return await self._paired_from_record()
            return await self.client.is_paired()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.opt(exception=e).error("device store unreadable: {}", e)
            await self.park(State.FAILED, f"device store unreadable: {e}")
            return None

    async def _paired_from_record(self) -> bool:
        """Engines whose device store belongs to Go (neonize): the record in oxyd.sqlite3 is
        the truth (written on pair success, connect and logout). A store nobody has a record of
        (copied in by hand, an adopted folder) is checked once, by a short-lived child."""
        if self.t.jid:
            return True
        if self._store_checked:
            return False
        found = await self.client.device()
        self._store_checked = True
        if not found:
            return False
        self.t.jid, self.t.push_name = found[0], found[1] or self.t.push_name
        self.log.info("device store holds {}: recorded", self.t.jid)
        await self.sup.store.save_state(self.t)
        return True

    async def _connect_loop(self) -> None:
        cfg = self.sup.cfg.supervisor
        after_ban = False
        while True:
            if self.t.state is State.BANNED and self.t.ban_expires_ms:
                wait_s = (self.t.ban_expires_ms - self.sup.clock.now_ms()) / 1000
                self.t.next_attempt_ms = self.t.ban_expires_ms
                await self._idle_until(self.sup.clock.monotonic() + wait_s)
                after_ban = True
            try:
                try:
                    ev = await self._attempt()
                    await self._session(ev)
                except Ended:
                    raise
                except Exception as e:  # a bug in the engine or here: not the tenant's fault
                    self.log.opt(exception=e).error("tenant task failed: {}", e)
                    raise Ended(f"internal error: {type(e).__name__}: {e}") from e
            except Ended as end:
                await self._stop_client()
                if end.state is State.BANNED and after_ban:
                    await self.park(State.FAILED, f"banned again after the ban expired ({end})")
                    return
                if end.state is State.BANNED:
                    ev = end.event
                    self.t.ban_expires_ms = self.sup.clock.now_ms() + int(ev.expire_s * 1000)
                    await self.park(State.BANNED, f"temporary ban (code {ev.code})")
                    continue
                if end.state is not None:
                    await self.park(end.state, end.reason)
                    return
                after_ban = False
                self.t.failures += 1
                network_wide = outage.widespread(self.sup.runners.values(), self)
                if not network_wide:
                    self.own_failures += 1
                if self.own_failures >= cfg.max_failures:
                    await self.park(
                        State.FAILED, f"{self.own_failures} failed attempts in a row; last: {end}"
                    )
                    return
                delay = backoff.delay_s(
                    self.t.failures - 1, cfg.backoff_base_s, cfg.backoff_cap_s, self.sup.rng
                )
                # One instant for both: the wait includes the time spent persisting the state.
                wake_at = self.sup.clock.monotonic() + delay
                self.t.next_attempt_ms = self.sup.clock.now_ms() + int(delay * 1000)
                await self.set(State.BACKOFF, end.reason)
                self.log.warning(
                    "{}; next attempt in {:.1f}s ({})",
                    end,
                    delay,
                    "network-wide outage: not counted toward max_failures"
                    if network_wide
                    else f"failure {self.own_failures} of {cfg.max_failures}",
                )
                await self._idle_until(wake_at)

    async def _attempt(self) -> m.Connected:
        cfg = self.sup.cfg.supervisor
        # Data left from the last session goes to the writer before a slot is taken: a runner
        # that waits for room in a starved writer while it holds a slot keeps every other
        # tenant from connecting (a soak left 21 tenants in `connecting` that way).
        await self._store_buffered()
        async with self.sup.gate.slot() as slot:
            self._slot = slot
            try:
                return await self._dial(cfg)
            finally:
                self._slot = None

    async def _dial(self, cfg: SupervisorConfig) -> m.Connected:
        """One connect inside its slot: the session's first event decides."""
        self.t.next_attempt_ms = None
        await self.set(State.CONNECTING, self.t.last_error)
        try:
            if self.t.settings:  # proxy, reject_calls, mark_online (PATCH /v1/tenants/{id})
                await self.client.configure(self.t.settings)
            await self.client.connect()
        except asyncio.CancelledError:
            raise
        except StoreUnusable as e:  # needs a person: retrying cannot repair a store
            raise Ended(f"device store unusable: {e}", State.FAILED) from e
        except Exception as e:
            raise Ended(f"connect failed: {e}") from e
        deadline = self.sup.clock.monotonic() + cfg.connect_timeout_s
        while True:
            ev = await self.next_event(deadline)
            if ev is None:
                raise Ended(f"connect timed out after {cfg.connect_timeout_s:g}s")
            if isinstance(ev, m.Connected):
                return ev
            check_end(ev)

    async def _session(self, ev: m.Connected) -> None:
        self.in_session = True
        try:
            await self._session_loop(ev)
        finally:
            self.in_session = False

    async def _session_loop(self, ev: m.Connected) -> None:
        cfg = self.sup.cfg.supervisor
        clock = self.sup.clock
        await self._connected(ev, reconnect=False)
        connected_at = self.last_ok_mono = clock.monotonic()
        reconnecting_since: float | None = None
        next_hb = connected_at + cfg.heartbeat_s
        while True:
            deadline = next_hb
            if self.t.failures and reconnecting_since is None:
                deadline = min(deadline, connected_at + cfg.stable_after_s)
            if reconnecting_since is not None:
                deadline = min(deadline, reconnecting_since + cfg.reconnect_timeout_s)
            ev = await self.next_event(deadline)
            now = clock.monotonic()
            if ev is None:
                if now >= next_hb:
                    if await self._heartbeat():
                        self.last_ok_mono = now
                    next_hb = clock.monotonic() + cfg.heartbeat_s
                    alive = max(self.last_ok_mono, self.last_event_mono)
                    if reconnecting_since is None and now - alive >= cfg.zombie_after_s:
                        await self.sup.zombie(self, now - alive)
                        raise Ended(f"zombie: no sign of life for {now - alive:.0f}s")
                    silent_s = self.traffic.silent_s(now) if reconnecting_since is None else None
                    if silent_s is not None:
                        why = "no event while the heartbeat passes, on a tenant with traffic"
                        await self.sup.zombie(self, silent_s, why)
                        raise Ended(f"zombie: {why} for {silent_s:.0f}s")
                if (
                    reconnecting_since is None
                    and self.t.failures
                    and now - connected_at >= cfg.stable_after_s
                ):
                    # Reset only after a real stable period, never on a bare "connected".
                    self.t.failures = self.own_failures = 0
                    await self.set(State.CONNECTED, None, force=True)
                if (
                    reconnecting_since is not None
                    and now - reconnecting_since >= cfg.reconnect_timeout_s
                ):
                    raise Ended(f"library reconnecting for over {cfg.reconnect_timeout_s:g}s")
                continue
            if isinstance(ev, m.Connected):
                if reconnecting_since is not None:
                    self.sup.reconnects[self.t.id] += 1
                reconnecting_since = None
                connected_at = self.last_ok_mono = now
                await self._connected(ev, reconnect=True)
            elif isinstance(ev, m.Disconnected):
                if reconnecting_since is None:
                    reconnecting_since = now
                    await self.set(State.RECONNECTING, "connection dropped; library reconnecting")
            elif isinstance(ev, m.KeepAliveTimeout):
                self.log.warning("keepalive timeout ({} errors)", ev.error_count)
            elif isinstance(ev, m.OfflineSyncCompleted):
                self.log.info("offline sync completed: caught up")
            elif not isinstance(ev, m.KeepAliveRestored):
                check_end(ev)

    async def _connected(self, ev: m.Connected, reconnect: bool) -> None:
        changed = (ev.jid and ev.jid != self.t.jid) or (
            ev.push_name and ev.push_name != self.t.push_name
        )
        self.t.jid = ev.jid or self.t.jid
        self.t.push_name = ev.push_name or self.t.push_name
        self.t.ban_expires_ms = None
        if self.t.state is not State.CONNECTED or changed:
            await self.set(State.CONNECTED, None)
        if not reconnect:
            self.log.info("connected as {}", self.t.jid or "?")

    async def _heartbeat(self) -> bool:
        try:
            return bool(
                await self.sup.bounded(self.client.heartbeat(), self.sup.cfg.supervisor.heartbeat_s)
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.debug("heartbeat failed: {}", e)
            return False

    async def _pair(self, phone: str | None) -> bool:
        cfg = self.sup.cfg.supervisor
        self.pairing = {"qr": None, "code": None, "expires_ms": None}
        previous = self.t.state
        await self.set(State.PAIRING, None)
        try:
            await self.client.pair(phone)
            deadline = self.sup.clock.monotonic() + cfg.pair_timeout_s
            while True:
                ev = await self.next_event(deadline)
                if ev is None:
                    raise Ended(f"pairing timed out after {cfg.pair_timeout_s:g}s")
                if isinstance(ev, m.PairSuccess):
                    self.t.jid, self.t.push_name = ev.jid, ev.push_name
                    self.t.failures = self.own_failures = 0
                    self.pairing = {"qr": None, "code": None, "expires_ms": None}
                    self.log.info("paired as {}", ev.jid)
                    return True
                if isinstance(ev, m.PairFailed):
                    raise Ended(f"pairing failed: {ev.reason}")
        except Ended as end:
            reason = str(end)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.opt(exception=e).error("pairing failed: {}", e)
            reason = f"pairing failed: {e}"
        await self._stop_client()
        self.pairing = {"qr": None, "code": None, "expires_ms": None}
        back = previous if previous in (State.LOGGED_OUT, State.NEW) else State.NEW
        await self.set(back, reason)
        return False

    # ---- state ----

    async def set(
        self, state: State, reason: str | None, alert: str | None = None, force: bool = False
    ) -> None:
        t = self.t
        if t.state is state and t.last_error == reason and not force:
            return
        old = t.state
        t.state, t.last_error = state, reason
        if state is State.LOGGED_OUT:
            t.jid = None  # unlinked: the device is gone from its store (whatsmeow deletes it)
        t.state_since_ms = self.sup.clock.now_ms()
        if state is not State.BACKOFF:
            t.next_attempt_ms = None if state is not State.BANNED else t.ban_expires_ms
        if old is not state:
            self.log.info("state {} -> {}{}", old, state, f" ({reason})" if reason else "")
        await self.sup.persist(self, alert)

    async def park(self, state: State, reason: str) -> None:
        alert = "alert." + ("zombie" if state is None else state.value)
        self.log.warning("parked in {}: {} -> {}", state, reason, ACTIONS.get(state, ""))
        await self.set(state, reason, alert=alert)

    async def _stop_client(self) -> None:
        try:
            await self.client.stop()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.opt(exception=e).warning("stopping the client failed: {}", e)
        # Whatever the stopped client said last is stale now.
        self.events = deque(e for e in self.events if isinstance(e, _DATA))
