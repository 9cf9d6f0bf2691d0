"""One tenant's neonize session (see oxyd/neonize/engine.py for the rules it keeps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from oxyd.engine import EngineError, Sink
from oxyd.model import (
    ClientOutdated,
    Connected,
    ConnectFailure,
    Event,
    LoggedOut,
    StreamReplaced,
    TemporaryBan,
)
from oxyd.neonize import events as tr
from oxyd.neonize import media as nmedia
from oxyd.neonize.device import STORE_NAME, DeviceStoreMixin, store_dsn
from oxyd.neonize.library import import_neonize
from oxyd.neonize.pair import PairingRun
from oxyd.neonize.people import EVENT_NAMES as PEOPLE_EVENTS
from oxyd.neonize.people import PeopleMixin
from oxyd.neonize.sending import SendingMixin
from oxyd.proxy import proxy_error

if TYPE_CHECKING:
    from oxyd.neonize.engine import NeonizeEngine

log = logging.getLogger("oxyd.neonize")

_TERMINAL = (LoggedOut, StreamReplaced, TemporaryBan, ClientOutdated, ConnectFailure)
_EVENT_NAMES = (
    "Connected",
    "Disconnected",
    "KeepAliveTimeout",
    "KeepAliveRestored",
    "OfflineSyncCompleted",
    "LoggedOut",
    "StreamReplaced",
    "TemporaryBan",
    "ClientOutdated",
    "ConnectFailure",
    "StreamError",
    "PairStatus",
    "Message",
    "Receipt",
    "HistorySync",
    *PEOPLE_EVENTS,
)


_DATA_EVENTS = frozenset({"Message", "Receipt", "HistorySync"})


class NeonizeClient(DeviceStoreMixin, PeopleMixin, SendingMixin):
    """One tenant's session; the engine keeps exactly one per tenant for the process' life."""

    def __init__(self, engine: NeonizeEngine, tenant_id: str, sink: Sink) -> None:
        self.engine = engine
        self.tenant_id = tenant_id
        self.sink = sink
        self.uuid = f"oxyd-{tenant_id}"
        self.store_dir = engine.data_dir / "tenants" / tenant_id
        self.store_path = self.store_dir / STORE_NAME
        self._nc: Any = None
        self._task: asyncio.Task | None = None
        self._stopper: asyncio.Task | None = None
        self._stop_entered_mono: float | None = None
        self._pairing: PairingRun | None = None
        self._had_session = False
        self._stopping = False
        self._explained = False
        # Stale: a stop or logout began; its lifecycle events mean nothing now, but data that
        # Go already acknowledged is still delivered. Muted: Go's Stop returned; nothing more.
        self._stale = False
        self._muted = False
        # The tenant's own settings (configure()); `proxy` overrides the engine's default.
        self.settings: dict[str, Any] = {}
        self._first_signal = asyncio.Event()
        self._own_jid: str | None = None
        self._last_event_mono: float | None = None
        self._people_init()

    # ---- store ----

    async def remove(self) -> None:
        await self.stop()
        await asyncio.to_thread(self._delete_store)

    # ---- native client and its handlers ----

    def native(self) -> Any:
        """The tenant's one NewAClient, created on first use with every handler registered
        (Go only forwards event codes subscribed before connect). Tests feed events into it."""
        if self._nc is None:
            import_neonize()
            from neonize.aioze import events as nev
            from neonize.aioze.client import NewAClient

            self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            nc = NewAClient(store_dsn(self.store_path), uuid=self.uuid)
            for name in _EVENT_NAMES:
                nc.event(getattr(nev, f"{name}Ev"))(self._handler(name))
            nc.qr(self._on_qr)
            self._nc = nc
        return self._nc

    def _handler(self, name: str) -> Any:
        async def handler(_nc: Any, ev: Any) -> None:
            # No await before this call: each event is its own task and only the first step
            # of those tasks runs in arrival order.
            self._on_event(name, ev)

        handler.__name__ = f"on_{name}"
        return handler

    def _on_event(self, name: str, ev: Any) -> None:
        try:
            self._last_event_mono = time.monotonic()
            self._first_signal.set()
            if self._muted or (self._stale and name not in _DATA_EVENTS):
                return
            if name == "Message":
                events: list[Event] = []
                msg = tr.message_from_event(ev, own_jid=self._own_jid)
                if msg is not None:
                    events.append(msg)
                    self._people_message(msg, ev)
            elif name == "Receipt":
                receipt = tr.receipt_from_event(ev)
                events = [receipt] if receipt is not None else []
            elif name == "HistorySync":
                events = tr.history_events(ev, own_jid=self._own_jid)
            elif name in PEOPLE_EVENTS:
                events = self._people_event(name, ev)
            else:
                one = tr.lifecycle_event(name, ev, me=self._nc.me if self._nc else None)
                events = [one] if one is not None else []
            for event in events:
                if isinstance(event, Connected):
                    self._own_jid = event.jid or self._own_jid
                    self._people_connected()
                if isinstance(event, _TERMINAL):
                    self._explained = True
                self._emit(event)
        except Exception:
            log.exception("neonize %s: cannot handle %s event", self.tenant_id, name)

    async def _on_qr(self, _nc: Any, _data: bytes) -> None:
        # A QR in the daemon means the store lost its device (connect checks it first): report
        # it and stop, never run a QR login here (an abandoned one can block a Go thread).
        self._first_signal.set()
        if not (self._muted or self._stale):
            self._explained = True
            self._emit(LoggedOut(reason="device store not paired"))
        with contextlib.suppress(Exception):
            await self.stop()

    def _emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except Exception:
            log.exception("neonize %s: sink failed on %s", self.tenant_id, type(event).__name__)

    # ---- session ----

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stuck(self) -> bool:
        """Go's Stop, or the session's connect call, has not returned within stop_grace_s of
        our stop getting the gate (waiting in the gate's queue is not being stuck)."""
        grace_s = self.engine.stop_grace_s
        if self._stopper is not None and not self._stopper.done():
            entered = self._stop_entered_mono
            return entered is not None and time.monotonic() - entered > grace_s
        return self._stopping and self.running

    def last_event_age_s(self) -> float | None:
        if self._last_event_mono is None:
            return None
        return time.monotonic() - self._last_event_mono

    async def configure(self, settings: dict[str, Any]) -> None:
        """The tenant's settings (plain data); `proxy` applies from the next connect,
        `mark_online` and `reject_calls` at once (see people.py)."""
        proxy = settings.get("proxy")
        why = proxy_error(proxy) if proxy is not None else None
        if why is not None:
            raise EngineError(f"proxy {why}")
        self.settings = dict(settings)
        if self.running:
            await self._presence()

    @property
    def proxy(self) -> str | None:
        return self.settings.get("proxy") or self.engine.proxy

    async def _start_session(self, nc: Any) -> asyncio.Task:
        """Test seam: the one place a session starts (through the proxy, when there is one)."""
        proxy = self.proxy
        if not proxy:
            return await nc.connect()
        from neonize._binder import ProxySettings

        return await nc.connect(ProxySettings(proxy_address=proxy))

    async def connect(self) -> None:
        await self.engine.start()
        if self._pairing is not None and self._pairing.active:
            raise EngineError("pairing in progress")
        if self.running:
            return
        if self._stopper is not None and not self._stopper.done():
            raise EngineError("previous session still stopping")
        # Whether the store holds a device is the supervisor's record (oxyd.sqlite3); a file
        # that lost its device shows a QR, which _on_qr reports as LoggedOut and stops.
        if not await asyncio.to_thread(self.store_path.is_file):
            raise EngineError("device store not paired")
        if not self._had_session:
            await asyncio.to_thread(self._check_header)
        nc = self.native()

        async def hold() -> None:
            # Exclusive until the first callback: neonize reads Go's maps again after
            # Connect() returns (see the notes' "Why in-process connects must stay serial").
            if self.engine.closing:
                raise EngineError("engine is shutting down")
            if self._had_session:
                await nc.stop()  # clear whatever a dead session left in Go's maps
            self._stopping = self._explained = self._stale = self._muted = False
            self._first_signal = asyncio.Event()
            task = await self._start_session(nc)
            self._had_session = True
            self._task = task
            task.add_done_callback(self._on_session_end)
            first = asyncio.ensure_future(self._first_signal.wait())
            try:
                await asyncio.wait(
                    {first, task},
                    timeout=self.engine.connect_hold_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                first.cancel()

        await self.engine.gate.run(hold, exclusive=True)

    def _on_session_end(self, task: asyncio.Task) -> None:
        if task is not self._task:
            return
        if task.cancelled():
            error: BaseException | str = "connect task cancelled"
        else:
            error = task.exception() or "session ended"
        if self._stopping or self._explained or self._stale or self._muted:
            log.debug("neonize %s: session ended (%s)", self.tenant_id, error)
            return
        log.warning("neonize %s: session died: %s", self.tenant_id, error)
        self._emit(tr.dead(error))

    async def heartbeat(self) -> bool:
        if not self.running:
            return False

        async def check() -> bool:
            if not self.running:
                return False
            # A property returning a coroutine: `if nc.is_logged_in:` would always be true.
            return bool(await self._nc.is_logged_in)

        return await self.engine.gate.run(check, exclusive=False)

    async def stop(self) -> None:
        """End the session or pairing. No events after it returns. Bounded by stop_grace_s;
        past that the client counts as stuck (see NeonizeEngine.close)."""
        self._stale = True
        if self._pairing is not None:
            await self._pairing.cancel()
        task = self._task
        if task is None or self._nc is None:
            self._muted = True
            return
        self._stopping = True
        if self._stopper is None or self._stopper.done():
            self._stop_entered_mono = None
            self._stopper = asyncio.ensure_future(self._stop_locked(task))
        # Queueing for the gate is unbounded (every holder is bounded); the Go calls are not.
        while not self._stopper.done() and self._stop_entered_mono is None:
            await asyncio.wait({self._stopper}, timeout=0.05)
        await asyncio.wait({self._stopper}, timeout=self.engine.stop_grace_s)
        # Handlers Go called before its Stop returned are queued on the loop: let them deliver
        # their data, then nothing more.
        for _ in range(3):
            await asyncio.sleep(0)
        self._muted = True
        if self.stuck:
            log.error(
                "neonize %s: stuck %.1f s after stop", self.tenant_id, self.engine.stop_grace_s
            )

    async def _stop_locked(self, task: asyncio.Task) -> None:
        # Not cancelled with its caller: the gate stays exclusive until Go's Stop returns,
        # since another neonize call during a Stop can corrupt Go's maps.
        async with self.engine.gate.exclusive():
            self._stop_entered_mono = time.monotonic()
            await self._nc.stop()
            await asyncio.wait({task}, timeout=self.engine.stop_grace_s)

    async def logout(self) -> None:
        """Unlink the device (needs a live session; otherwise only the local store is cleared,
        and the phone still lists the device), end the session, delete the store."""
        if self.running:
            self._stale = True

            async def unlink() -> None:
                try:
                    await self._nc.logout()
                except Exception as e:
                    log.warning("neonize %s: logout failed: %s", self.tenant_id, e)

            await self.engine.gate.run(unlink, exclusive=True)
        else:
            log.warning("neonize %s: not connected; device removed locally only", self.tenant_id)
        await self.stop()
        await asyncio.to_thread(self._delete_store)

    # ---- pairing ----

    async def pair(self, phone: str | None) -> None:
        await self.engine.start()
        if phone is not None:
            phone = re.sub(r"[\s+()-]", "", phone)
            if not re.fullmatch(r"\d{6,20}", phone):
                raise EngineError("phone must be international digits without +")
        await self.stop()
        if await self.is_paired():
            raise EngineError("device store is already paired")
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stale = self._muted = False
        self._pairing = PairingRun(
            argv=[
                *self.engine.pair_argv,
                str(self.store_path),
                self.uuid,
                *([phone] if phone else []),
            ],
            emit=self._emit,
            now_ms=self.engine.clock.now_ms,
            timeout_s=self.engine.pair_timeout_s,
            label=self.tenant_id,
            proxy=self.proxy,
        )
        await self._pairing.start()

    # ---- incoming media (oxyd/neonize/media.py says what neonize 0.5.2 allows) ----

    async def download_media(self, ref: str, dest: str, max_bytes: int) -> dict:
        return await nmedia.download(self, ref, dest, max_bytes)

    async def request_media_reupload(
        self, ref: str, chat: str, sender: str, wa_id: str, from_me: bool
    ) -> str:
        raise EngineError(nmedia.NO_MEDIA_RETRY)
