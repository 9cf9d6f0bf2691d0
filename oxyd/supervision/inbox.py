"""A runner's inbox: the engine's sink appends events in order; lifecycle events go to the
runner, data events to the writer, with back-pressure (when the writer and this buffer are
both full, the session is paused instead of buffering without limit)."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any

from oxyd import model as m
from oxyd.backoff import Slot
from oxyd.supervision.outcome import Ended

if TYPE_CHECKING:
    from oxyd.liveness import Traffic
    from oxyd.supervision.host import Host

_DATA = (m.Message, m.Receipt, m.HistorySync, m.Contact, *m.PEOPLE_DATA)
# Events a runner buffers while the writer is full before it asks the engine to stop
# receiving: memory stays bounded however fast WhatsApp (or the simulator) sends.
EVENTS_MAX = 10_000


class Inbox:
    """The Runner's event buffer (a mixin: the members below are the Runner's)."""

    sup: Host
    t: m.Tenant
    log: Any  # loguru's bound logger
    client: Any  # the engine's Client
    events: deque[m.Event]
    _waiter: asyncio.Future[None] | None
    last_event_mono: float
    traffic: Traffic
    in_session: bool
    pauses: int
    _slot: Slot | None
    pairing: dict[str, Any]

    if TYPE_CHECKING:  # the Runner's own (a stub here would shadow it)

        async def _stop_client(self) -> None: ...

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
            raise Ended(f"reconnect after a back-pressure pause failed: {e}") from e

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
