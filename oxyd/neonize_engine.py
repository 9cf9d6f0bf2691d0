"""The neonize (whatsmeow) engine: real WhatsApp multi-device sessions, one per tenant.

Only this module and oxyd/neonize_events.py (pure translation) import neonize, lazily, because
`import neonize` calls logging.basicConfig: set up oxyd's logging first. Every rule below comes
from /work/shared/neonize-notes.md (several neonize calls kill the whole process):

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
- Pairing runs in a short-lived child process (oxyd/neonize_pair.py), killed on timeout, so an
  abandoned QR login cannot leave a Go thread blocked in the daemon.
- close() stops every client within `stop_grace_s` and returns False if a neonize thread is still
  stuck: the daemon then flushes its store and calls os._exit (close() never exits by itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import re
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from oxyd.clock import Clock, RealClock
from oxyd.engine import EngineError, NotConnected, OutboundMedia, Sink
from oxyd.model import (
    ClientOutdated,
    Connected,
    ConnectFailure,
    Event,
    LoggedOut,
    Message,
    PairCode,
    PairFailed,
    PairQR,
    PairSuccess,
    StreamReplaced,
    TemporaryBan,
)
from oxyd.neonize_gate import Gate

log = logging.getLogger("oxyd.neonize")

STORE_NAME = "whatsmeow.sqlite3"
# WAL + busy timeout; the trailing `_x=` swallows the `?_foreign_keys=on` neonize appends.
DSN_OPTIONS = "?_foreign_keys=on&_journal_mode=WAL&_busy_timeout=15000&_x="
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
)
_RECIPIENT_RE = re.compile(r"^(\d{6,20})$|^([0-9A-Za-z.:_-]{1,64})@([a-z.]{1,32})$")
PHONE_RE = re.compile(r"^\d{6,20}$")


def store_dsn(path: pathlib.Path) -> str:
    return f"{path}{DSN_OPTIONS}"


def read_device(path: pathlib.Path) -> tuple[str, str | None] | None:
    """(jid, push name) of the paired device in a whatsmeow store file, without neonize
    (whose device listing leaks a file handle per call). Missing file or table = not paired."""
    if not path.is_file():
        return None
    from oxyd.neonize_events import parse_jid

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            row = con.execute("SELECT jid, push_name FROM whatsmeow_device LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    if not row or not row[0]:
        return None
    return parse_jid(row[0]) or row[0], row[1] or None


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


class NeonizeEngine:
    """Engine for `engine: neonize` tenants. See the module docstring for the rules."""

    name = "neonize"

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        max_tenants: int = 64,
        clock: Clock | None = None,
        pair_timeout_s: float = 180.0,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.max_tenants = max_tenants
        self.clock = clock or RealClock()
        self.pair_timeout_s = pair_timeout_s
        self.stop_grace_s = stop_grace_s
        # How long a connect keeps the gate exclusive when no event arrives (notes: ~3 s).
        self.connect_hold_s = 3.0
        # The pairing child; tests point it at a fake script.
        self.pair_argv: list[str] = [sys.executable, "-m", "oxyd.neonize_pair"]
        self.gate = Gate()
        self._clients: dict[str, NeonizeClient] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Prepare the running loop for neonize; await once before any client connects."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        quiet_neonize_logs()
        self._executor = ThreadPoolExecutor(
            max_workers=2 * self.max_tenants + 16, thread_name_prefix="oxyd-neonize"
        )
        loop.set_default_executor(self._executor)
        from neonize.aioze import events

        # set_event_loop() only sets it once per process; a stale loop would swallow events.
        events.event_global_loop = loop

    def client(self, tenant_id: str, sink: Sink) -> NeonizeClient:
        client = self._clients.get(tenant_id)
        if client is None:
            client = self._clients[tenant_id] = NeonizeClient(self, tenant_id, sink)
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
        clean = not self.stuck()
        if clean and self._executor is not None:
            self._executor.shutdown(wait=False)
        return clean


def quiet_neonize_logs() -> None:
    """neonize forwards Go log lines at the level of its logger: keep them at WARNING."""
    for name in (
        "neonize",
        "neonize.utils.log",
        "whatsmeow",
        "Whatsmeow",
        "whatsmeow.Client",
        "Whatsmeow.Database",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # We never use neonize's ffmpeg paths; its "ffmpeg missing" warning would mislead.
    logging.getLogger("neonize.utils.ffmpeg").setLevel(logging.ERROR)


from oxyd.neonize_client import NeonizeClient  # noqa: E402  (the client needs the engine)

__all__ = [
    "NeonizeClient",
    "NeonizeEngine",
    "read_device",
    "store_dsn",
]
_unused = (
    Any,
    json,
    time,
    Event,
    Message,
    PairCode,
    PairFailed,
    PairQR,
    PairSuccess,
    EngineError,
    NotConnected,
    OutboundMedia,
    Connected,
    PHONE_RE,
    _RECIPIENT_RE,
    _TERMINAL,
    _EVENT_NAMES,
    STORE_NAME,
)
