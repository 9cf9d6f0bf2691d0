"""The neonize (whatsmeow) engine: real WhatsApp multi-device sessions, one per tenant.

Only the oxyd/neonize_*.py modules import neonize (engine, client, pair, events: pure
translation), all lazily, because `import neonize` calls logging.basicConfig: set up oxyd's
logging first. Every rule below comes from the neonize field notes (shared/neonize-notes.md;
several neonize calls kill the whole process):

- ONE reader/writer gate around every neonize call: connect (until its first event, or
  `connect_hold_s`) and stop/logout exclusive, everything else shared; tenants start one at a
  time. Use ONE NeonizeEngine per process (the gate stands for Go's process-wide maps).
- `await engine.start()` once before any connect (connect() also calls it): it sizes the loop's
  default executor (each live session pins a thread), points neonize's global event loop at the
  running loop and quiets neonize's loggers.
- ONE NewAClient per tenant for the life of the process, reused across reconnects, never `jid=`
  (a discarded object with a live uuid stops the live session when garbage-collected), so
  clients are cached even after remove().
- Handlers are registered before the first connect and hand events to the sink before any await.
- Any end of the connect task is reported as ClientDead unless we stopped it or a terminal
  event (LoggedOut, StreamReplaced, TemporaryBan, ClientOutdated, ConnectFailure) explained it.
- Pairing runs in a short-lived child process (oxyd/neonize/pair.py), killed on timeout, so an
  abandoned QR login cannot leave a Go thread blocked in the daemon.
- close() stops every client within `stop_grace_s` and returns False if a neonize thread is still
  stuck: the daemon then flushes its store and calls os._exit (close() never exits by itself).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pathlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from oxyd.clock import Clock, RealClock
from oxyd.engine import Sink
from oxyd.model import valid_tenant_id
from oxyd.neonize.client import NeonizeClient, store_dsn
from oxyd.neonize.device import read_device
from oxyd.neonize.library import import_neonize, quiet_neonize_logs

log = logging.getLogger("oxyd.neonize")
T = TypeVar("T")
# Threads beyond one per live session: room for calls (sends, heartbeats, store work).
EXECUTOR_HEADROOM = 16


def process_resources() -> dict[str, int]:
    """RSS and open file descriptors of this process (every connect leaks a handle)."""
    rss_bytes = 0
    try:
        with open("/proc/self/statm") as f:
            rss_bytes = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    return {"rss_bytes": rss_bytes, "open_fds": fds}


class Gate:
    """A fair (FIFO) reader/writer gate for neonize calls: a waiting exclusive holder blocks
    newer shared ones, so a connect or stop is never starved by a stream of sends.

    Plain counters and futures instead of asyncio locks: release never awaits, so a cancelled
    holder cannot leak the gate."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._waiters: collections.deque[tuple[bool, asyncio.Future[None]]] = collections.deque()

    @property
    def busy(self) -> bool:
        return self._writer or self._readers > 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._acquire(False)
        try:
            yield
        finally:
            self._release(False)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        await self._acquire(True)
        try:
            yield
        finally:
            self._release(True)

    async def run(self, fn: Callable[[], Awaitable[T]], *, exclusive: bool) -> T:
        """Run `fn()` holding the gate. A caller cancelled while waiting withdraws; one cancelled
        while fn runs stops waiting, but fn runs on (a Go call cannot be taken back) and the
        gate is released when it completes, never while it still runs."""
        await self._acquire(exclusive)
        try:
            task = asyncio.ensure_future(fn())
        except BaseException:
            self._release(exclusive)
            raise

        def done(t: asyncio.Task) -> None:
            self._release(exclusive)
            if not t.cancelled():
                t.exception()  # retrieved: an abandoned call's error was the caller's to see

        task.add_done_callback(done)
        return await asyncio.shield(task)

    def _free_for(self, exclusive: bool) -> bool:
        return not self._writer and (self._readers == 0 or not exclusive)

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self._writer = True
        else:
            self._readers += 1

    async def _acquire(self, exclusive: bool) -> None:
        if not self._waiters and self._free_for(exclusive):
            self._take(exclusive)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (exclusive, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(exclusive)  # granted, then cancelled before we could use it
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def _release(self, exclusive: bool) -> None:
        if exclusive:
            self._writer = False
        else:
            self._readers -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            exclusive, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._free_for(exclusive):
                return
            self._waiters.popleft()
            self._take(exclusive)
            fut.set_result(None)


class NeonizeEngine:
    """Engine for `engine: neonize` tenants. See the module docstring for the rules."""

    name = "neonize"
    # The supervisor keeps the paired state in oxyd.sqlite3: no Python code opens a device
    # store this process's Go side may hold (that would drop Go's POSIX locks).
    paired_state_in_db = True

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        max_tenants: int = 64,
        clock: Clock | None = None,
        pair_timeout_s: float = 180.0,
        stop_grace_s: float = 10.0,
        proxy: str | None = None,
    ) -> None:
        self.data_dir = pathlib.Path(data_dir)
        # The expected tenant count: sizes the thread pool, which grows past it when needed.
        self.max_tenants = max_tenants
        # Default proxy of every client (`neonize.proxy`); a tenant's own setting wins.
        self.proxy = proxy
        self.clock = clock or RealClock()
        self.pair_timeout_s = pair_timeout_s
        self.stop_grace_s = stop_grace_s
        # How long a connect keeps the gate exclusive when no event arrives (notes: ~3 s).
        self.connect_hold_s = 3.0
        # The pairing child; tests point it at a fake script.
        self.pair_argv: list[str] = [sys.executable, "-m", "oxyd.neonize.pair"]
        self.gate = Gate()
        # Device store checks run in child processes (oxyd/neonize/device.py): a few at a time.
        self.store_checks = asyncio.Semaphore(2)
        self.closing = False
        self._clients: dict[str, NeonizeClient] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.executor_size = 0

    async def start(self) -> None:
        """Prepare the running loop for neonize; await once before any client connects."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        import_neonize()
        quiet_neonize_logs()
        self._executor, self.executor_size = None, 0  # a new loop gets its own pool
        self._size_executor()
        from neonize.aioze import events

        # set_event_loop() only sets it once per process; a stale loop would swallow events.
        events.event_global_loop = loop

    def _size_executor(self) -> None:
        """Each live session pins a thread for its whole life: the pool holds one per client of
        this process plus room for calls, and grows as tenants are added. ThreadPoolExecutor
        starts threads lazily, so the size is a cap, not a cost. Growing swaps in a bigger
        default executor; the old one finishes what it runs (its pinned sessions) and ends."""
        loop = self._loop
        if loop is None:
            return
        want = max(self.max_tenants, len(self._clients)) + EXECUTOR_HEADROOM
        old = self._executor
        if old is not None and self.executor_size >= want:
            return
        if old is not None:
            want = max(want, 2 * self.executor_size)  # grow in steps, not one thread at a time
        self._executor = ThreadPoolExecutor(max_workers=want, thread_name_prefix="oxyd-neonize")
        self.executor_size = want
        loop.set_default_executor(self._executor)
        if old is not None:
            old.shutdown(wait=False)

    def live_count(self) -> int:
        return sum(c.running for c in self._clients.values())

    def client(self, tenant_id: str, sink: Sink) -> NeonizeClient:
        if not valid_tenant_id(tenant_id):
            raise ValueError(f"invalid tenant id {tenant_id!r}")  # it becomes a path
        client = self._clients.get(tenant_id)
        if client is None:
            client = self._clients[tenant_id] = NeonizeClient(self, tenant_id, sink)
            self._size_executor()
        else:
            client.sink = sink
        return client

    def stuck(self) -> bool:
        """Whether a neonize thread is still blocked after a stop (then os._exit at shutdown)."""
        return any(c.stuck for c in self._clients.values())

    def resources(self) -> dict[str, int]:
        return process_resources()

    async def close(self) -> bool:
        """Stop every client, all within `stop_grace_s`. Returns True when clean; False when a
        neonize thread is still stuck: the caller must flush its store and then os._exit(),
        because interpreter shutdown would wait for that thread forever."""
        self.closing = True  # connects queued behind these stops must not start
        stops = [asyncio.ensure_future(c.stop()) for c in self._clients.values()]
        if stops:
            _, pending = await asyncio.wait(stops, timeout=self.stop_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.error(
                    "neonize: %d client(s) did not stop within %.1f s",
                    len(pending),
                    self.stop_grace_s,
                )
                return False
        # The executor stays: it is the loop's default now, and asyncio.run shuts it down.
        return not self.stuck()


__all__ = [
    "Gate",
    "NeonizeClient",
    "NeonizeEngine",
    "import_neonize",
    "process_resources",
    "quiet_neonize_logs",
    "read_device",
    "store_dsn",
]
