"""One tenant's life: connect, watch, back off, park. The supervisor owns one Runner per tenant.

Errors split three ways (as Home Assistant's config entries do): transient (back off and try
again), needs-a-person (park in a terminal state, persist, alert; never retried), and bugs
(log the traceback, count as a failed attempt, back off). Cancellation is always re-raised.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, deque
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from loguru import logger

from oxyd import backoff, outage
from oxyd import model as m
from oxyd.backoff import ConnectGate, Slot
from oxyd.clock import Clock
from oxyd.config import Config, SupervisorConfig
from oxyd.engine import Engine, StoreUnusable
from oxyd.liveness import Traffic
from oxyd.model import PARKED, State
from oxyd.ratelimit import TokenBucket
from oxyd.store.db import Store
from oxyd.store.outbox import Subscriptions
from oxyd.store.writer import Writer

T = TypeVar("T")


class Host(Protocol):
    """What a Runner needs from whoever owns it (the Supervisor). Named here, so a runner
    depends on these members only and never imports the supervisor."""

    cfg: Config
    clock: Clock
    engines: dict[str, Engine]
    store: Store
    writer: Writer
    subs: Subscriptions
    gate: ConnectGate
    rng: random.Random
    reconnects: Counter[str]
    runners: dict[str, Runner]  # every tenant's, to tell an outage from a tenant's own failure

    def send_bucket(self) -> TokenBucket: ...
    def runner_done(self, task: asyncio.Task) -> None: ...
    async def bounded(self, aw: Awaitable[T], timeout_s: float) -> T: ...
    async def persist(self, r: Runner, alert: str | None) -> None: ...
    async def zombie(self, r: Runner, silent_s: float, why: str = ...) -> None: ...
    def publish(self, event: dict[str, Any]) -> None: ...


_DATA = (m.Message, m.Receipt, m.HistorySync, m.Contact, *m.PEOPLE_DATA)
# Events a runner buffers while the writer is full before it asks the engine to stop
# receiving: memory stays bounded however fast WhatsApp (or the simulator) sends.
EVENTS_MAX = 10_000
# SQLite's own words for a damaged database file, as the engine reports them when its device
# store cannot be opened.
_STORE_CORRUPT = ("file is not a database", "database disk image is malformed")
# What an operator should do about each state that needs a person.
ACTIONS = {
    State.LOGGED_OUT: "the phone unlinked this device: pair it again",
    State.CONFLICT: "another client uses this session: stop the other client, then start it",
    State.OUTDATED: "WhatsApp refuses this client version: upgrade oxyd (neonize), then start",
    State.FAILED: "too many failed attempts in a row: check the last error, then start it",
    State.BANNED: "temporarily banned by WhatsApp: oxyd retries once after the ban expires",
}
_TERMINAL = {
    m.LoggedOut: State.LOGGED_OUT,
    m.StreamReplaced: State.CONFLICT,
    m.ClientOutdated: State.OUTDATED,
    m.TemporaryBan: State.BANNED,
}


class _Ended(Exception):
    """The session (or attempt) ended; `state` is set for needs-a-person endings."""

    def __init__(self, reason: str, state: State | None = None, event: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state
        self.event = event


class Runner:
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

    # ---- the engine's sink: on the loop thread, never awaits ----

    def _sink(self, ev: m.Event) -> None:
        self.events.append(ev)
        self.last_event_mono = now = self.sup.clock.monotonic()
        self.traffic.note(now)
        self.t.last_event_ms = self.sup.clock.now_ms()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    @property
    def queue_depth(self) -> int:
        return len(self.events) + self.sup.writer.pending_by_tenant.get(self.t.id, 0)

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
                except _Ended:
                    raise
                except Exception as e:  # a bug in the engine or here: not the tenant's fault
                    self.log.opt(exception=e).error("tenant task failed: {}", e)
                    raise _Ended(f"internal error: {type(e).__name__}: {e}") from e
            except _Ended as end:
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
            raise _Ended(f"device store unusable: {e}", State.FAILED) from e
        except Exception as e:
            raise _Ended(f"connect failed: {e}") from e
        deadline = self.sup.clock.monotonic() + cfg.connect_timeout_s
        while True:
            ev = await self.next_event(deadline)
            if ev is None:
                raise _Ended(f"connect timed out after {cfg.connect_timeout_s:g}s")
            if isinstance(ev, m.Connected):
                return ev
            self._check_end(ev)

    def _check_end(self, ev: m.Event) -> None:
        state = _TERMINAL.get(type(ev))
        if state is not None:
            reason = getattr(ev, "reason", None) or state.value.replace("_", " ")
            raise _Ended(str(reason), state, ev)
        if isinstance(ev, m.ConnectFailure):
            raise _Ended(f"connect failure {ev.reason}: {ev.message}".rstrip(": "))
        if isinstance(ev, m.ClientDead):
            if ev.error and any(s in ev.error for s in _STORE_CORRUPT):
                # The engine could not open its own device store: retrying cannot repair a
                # damaged file, and a person must look (restore a backup, or re-pair).
                raise _Ended(f"device store corrupt: {ev.error}", State.FAILED)
            raise _Ended(f"client ended: {ev.error}" if ev.error else "client ended")

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
                        raise _Ended(f"zombie: no sign of life for {now - alive:.0f}s")
                    silent_s = self.traffic.silent_s(now) if reconnecting_since is None else None
                    if silent_s is not None:
                        why = "no event while the heartbeat passes, on a tenant with traffic"
                        await self.sup.zombie(self, silent_s, why)
                        raise _Ended(f"zombie: {why} for {silent_s:.0f}s")
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
                    raise _Ended(f"library reconnecting for over {cfg.reconnect_timeout_s:g}s")
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
                self._check_end(ev)

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
                    raise _Ended(f"pairing timed out after {cfg.pair_timeout_s:g}s")
                if isinstance(ev, m.PairSuccess):
                    self.t.jid, self.t.push_name = ev.jid, ev.push_name
                    self.t.failures = self.own_failures = 0
                    self.pairing = {"qr": None, "code": None, "expires_ms": None}
                    self.log.info("paired as {}", ev.jid)
                    return True
                if isinstance(ev, m.PairFailed):
                    raise _Ended(f"pairing failed: {ev.reason}")
        except _Ended as end:
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

    # ---- events ----

    async def next_event(self, deadline_mono: float) -> m.Event | None:
        """The next lifecycle event before the deadline, or None. Data events met on the way
        go to the writer in order; pairing updates are recorded and published."""
        clock = self.sup.clock
        while True:
            while self.events:
                ev = self.events[0]
                if isinstance(ev, _DATA):
                    await self._ingest()
                    continue
                self.events.popleft()
                if isinstance(ev, m.PairQR | m.PairCode):
                    await self._pairing_update(ev)
                else:
                    return ev
            remaining = deadline_mono - clock.monotonic()
            if remaining <= 0:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            sleeper = asyncio.ensure_future(clock.sleep(remaining))
            try:
                await asyncio.wait({self._waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                self._waiter = None

    async def _ingest(self) -> None:
        """Hand the data events at the head of the queue to the writer, in order. They leave
        the queue only once the writer holds them: a cancel while the writer is full
        (back-pressure) loses nothing."""
        events = self.events
        batch = []
        for ev in events:
            if not isinstance(ev, _DATA) or len(batch) == 1000:
                break
            batch.append(ev)
        taken = self.sup.writer.offer(self.t.id, batch)
        for _ in range(taken):
            events.popleft()
        if taken < len(batch):
            if self.in_session:
                await self._wait_room_or_pause()
                return
            slot = self._slot
            if slot is not None and slot.held:
                # Data during a connect attempt: the handshake is done (WhatsApp delivers
                # offline messages only to a logged-in session, sometimes before the Connected
                # event), and a slot held through a wait for the writer would keep the other
                # tenants from connecting. Given back for the rest of this attempt.
                self.log.debug("store writer full during the connect: connect slot released")
                slot.release()
            await self.sup.writer.wait_room()

    async def _store_buffered(self) -> None:
        """Hand the data events at the head of the buffer to the writer, waiting for room."""
        while self.events and isinstance(self.events[0], _DATA):
            await self._ingest()

    async def _wait_room_or_pause(self) -> None:
        """Wait for room in the writer; if this buffer fills up first, pause the session."""
        room = asyncio.ensure_future(self.sup.writer.wait_room())
        try:
            while not room.done():
                if len(self.events) >= EVENTS_MAX:
                    await self._pause_receiving()
                    return
                self._waiter = asyncio.get_running_loop().create_future()
                await asyncio.wait({self._waiter, room}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiter = None
            room.cancel()

    async def _pause_receiving(self) -> None:
        """The writer is saturated and this buffer is full: stop the client instead of
        buffering without limit. What the engine has not acknowledged stays with WhatsApp (the
        simulator keeps it on its "server") and arrives after the reconnect, once the writer
        has taken everything buffered here. Not a failure: the failure counter is untouched."""
        self.pauses += 1
        self.log.warning(
            "store writer saturated with {} events buffered: pausing this session until it drains",
            len(self.events),
        )
        await self._stop_client()  # leaves only data events in the buffer
        writer = self.sup.writer
        while self.events:
            batch = list(itertools.islice(self.events, 1000))
            taken = writer.offer(self.t.id, batch)
            for _ in range(taken):
                self.events.popleft()
            if taken < len(batch):
                await writer.wait_room()
        self.log.info("store writer caught up: resuming the session")
        try:
            await self.client.connect()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise _Ended(f"reconnect after a back-pressure pause failed: {e}") from e

    async def _idle_until(self, deadline_mono: float) -> None:
        """Wait (still ingesting late data events); lifecycle events of a stopped client are
        stale and dropped."""
        while await self.next_event(deadline_mono) is not None:
            pass

    async def _pairing_update(self, ev: m.PairQR | m.PairCode) -> None:
        if isinstance(ev, m.PairQR):
            self.pairing = {
                "qr": ev.code,
                "code": self.pairing.get("code"),
                "expires_ms": ev.expires_ms,
            }
            etype, data = "pairing.qr", {"qr": ev.code, "expires_ms": ev.expires_ms}
        else:
            self.pairing = {
                "qr": self.pairing.get("qr"),
                "code": ev.code,
                "expires_ms": ev.expires_ms,
            }
            etype, data = "pairing.code", {"code": ev.code, "expires_ms": ev.expires_ms}
        self.sup.publish({"type": "pairing", "tenant": self.t.id, "pairing": dict(self.pairing)})
        if self.sup.subs.wants(self.t.id, etype):
            await self.sup.writer.put(self.t.id, ("event", etype, data))

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
