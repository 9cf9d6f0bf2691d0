"""The daemon's end of one engine host process (oxyd/neonize/host.py): starting it, calls
with ids and their replies, its event frames handed to the pool, and what its death means.

A host's end (EOF on its stdout) fails every call in flight with HostDied and hands the pool a
reason naming the exit code or signal and the stderr line that explains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import time
from typing import TYPE_CHECKING, Any

from oxyd.engine import EngineError, SendUnknown
from oxyd.neonize import wire

if TYPE_CHECKING:
    from oxyd.neonize.pool import HostPool

log = logging.getLogger("oxyd.neonize.pool")

STDERR_TAIL = 20
_ROUTINE = ("DEBUG ", "INFO ", "WARNING ")


def _exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "exited"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


# How a dying host's stderr says why (a Go runtime crash prints its goroutine stacks after).
_LAST_WORDS = re.compile(
    r"^(fatal error|panic|SIGSEGV|SIGABRT|runtime:|engine host failed|\w+Error)"
)


def _last_words(tail: list[str], killed: bool) -> str:
    """The stderr line that explains an exit: a crash line when there is one; else, for an
    exit (not a signal), the last line."""
    for line in reversed(tail):
        if _LAST_WORDS.match(line.strip()):
            return line.strip()
    return "" if killed or not tail else tail[-1].strip()


class HostDied(SendUnknown):
    """The engine host running this tenant ended; the call's outcome is unknown (for a send:
    the message may have left, see oxyd/send_attempt.py)."""


class Host:
    """One engine host process and the calls in flight to it."""

    def __init__(self, pool: HostPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.proc: asyncio.subprocess.Process | None = None
        self.tenants: set[str] = set()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.stderr_tail: list[str] = []
        self.draining = False
        self.alive = False
        self.reason = ""
        self.started_mono = 0.0
        self.ended: asyncio.Future[str] | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.ended = loop.create_future()
        options = {**self.pool.host_options, "parent_pid": os.getpid()}
        self.proc = await asyncio.create_subprocess_exec(
            *self.pool.host_argv,
            str(self.pool.data_dir),
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # the terminal's Ctrl-C is for the daemon, which stops us
        )
        self.alive = True
        self.started_mono = time.monotonic()
        self._tasks = [
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._read_stderr()),
        ]
        try:
            await asyncio.wait_for(self.call(None, "ping", (), {}), self.pool.start_timeout_s)
        except Exception as e:
            await self.kill()
            raise EngineError(f"engine host {self.number} did not start: {e}") from e
        log.info("engine host %d started (pid %d)", self.number, self.proc.pid)

    async def call(self, tenant: str | None, method: str, args: Any, kwargs: Any) -> Any:
        if not self.alive or self.proc is None or self.proc.stdin is None:
            raise HostDied(f"engine host {self.number} is down: {self.reason}")
        call_id = next(self.ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = fut
        msg = {
            "op": "call",
            "id": call_id,
            "tenant": tenant,
            "method": method,
            "args": list(args),
            "kwargs": kwargs,
        }
        try:
            self.proc.stdin.write(wire.frame(msg))
        except Exception:
            self.pending.pop(call_id, None)
            raise
        try:
            return await fut
        except asyncio.CancelledError:
            if self.pending.pop(call_id, None) is not None and self.alive:
                with contextlib.suppress(Exception):
                    self.proc.stdin.write(wire.frame({"op": "cancel", "id": call_id}))
            raise

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        reader = wire.Reader()
        try:
            while data := await self.proc.stdout.read(1 << 16):
                for f in reader.feed(data):
                    self._on_frame(f)
        except Exception as e:
            log.error("engine host %d: bad stream: %r", self.number, e)
            self.stderr_tail.append(f"bad stream: {e}")
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        # stderr is read to its end first, so the reason carries the host's last words.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._tasks[1], 2.0)
        self._ended()

    def _on_frame(self, f: dict[str, Any]) -> None:
        op = f.get("op")
        if op == "events":
            for tenant, event in f["items"]:
                self.pool.deliver(tenant, event)
        elif op in ("result", "error"):
            fut = self.pending.pop(f.get("id"), None)
            if fut is None or fut.done():
                return
            if op == "result":
                fut.set_result(f.get("value"))
            else:
                fut.set_exception(
                    wire.exception(f.get("type", ""), f.get("message", ""), f.get("attrs"))
                )

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                self.stderr_tail = [*self.stderr_tail[-(STDERR_TAIL - 1) :], text]
                # The host's own log lines about tenants reach the daemon as events too.
                level = logging.DEBUG if text.startswith(_ROUTINE) else logging.WARNING
                log.log(level, "engine host %d: %s", self.number, text)

    def _ended(self) -> None:
        assert self.proc is not None
        self.alive = False
        reason = f"engine host {self.number} {_exit_reason(self.proc.returncode)}"
        last = _last_words(self.stderr_tail, killed=(self.proc.returncode or 0) < 0)
        self.reason = f"{reason}: {last[:300]}" if last else reason
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(HostDied(self.reason))
        self.pending.clear()
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(self.reason)
        self.pool.host_ended(self)

    async def close(self, grace_s: float) -> bool:
        """Stop its clients (the host's own grace), then wait for it to exit; kill past that."""
        clean = False
        if self.alive:
            with contextlib.suppress(Exception):
                clean = bool(await asyncio.wait_for(self.call(None, "close", (), {}), grace_s))
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            if self.ended is not None:
                await asyncio.wait_for(asyncio.shield(self.ended), 3.0)
        except TimeoutError:
            await self.kill()
            clean = False
        return clean

    async def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if self.ended is not None and self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.ended), 5.0)
