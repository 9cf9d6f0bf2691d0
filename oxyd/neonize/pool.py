"""Engine hosts, daemon side: `neonize.hosts: N` runs the neonize clients in N child processes.

In one process every connect holds neonize's gate for a whole whatsmeow Connect() and one Go
`fatal error` ends every tenant; each host (oxyd/neonize/host.py) has its own Go runtime, gate
and thread pool, so connects run N at a time and a crash ends one host's tenants only.

- HostPool is the Engine the supervisor sees; HostedClient forwards every NeonizeClient method
  by name (no per-method code: methods added to NeonizeClient work over the pipe at once).
- A tenant is placed on the least-loaded host with room (`tenants_per_host`) at its first call
  and keeps that host while it lives.
- A host that dies fails its calls in flight, gives each of its tenants with a session a
  ClientDead (each pairing one a PairFailed) naming the exit code or signal and its last stderr
  line, and is restarted with its own backoff; other hosts' tenants see nothing.
- Recycling: a host past `recycle_fds` / `recycle_rss_mb` stops taking tenants, a fresh host
  starts, its tenants move one by one (through the supervisor's connect limit when given),
  then it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import pathlib
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from oxyd.engine import EngineError, Sink
from oxyd.model import ClientDead, PairFailed, valid_tenant_id
from oxyd.neonize import wire
from oxyd.neonize.client import NeonizeClient

log = logging.getLogger("oxyd.neonize.pool")

# Calls that open or end a tenant's session: serialised per tenant (a move between hosts must
# not interleave with them) and tracked, so a host's death tells the tenant what it lost.
_OPENS = {"connect": "session", "pair": "pairing"}
_ENDS = {"stop", "logout", "remove"}
_LIFECYCLE = {*_OPENS, *_ENDS, "configure"}
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


class HostDied(EngineError):
    """The engine host running this tenant ended; the call's outcome is unknown."""


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


class HostedClient:
    """A tenant's client in an engine host: every public NeonizeClient method, forwarded."""

    def __init__(self, pool: HostPool, tenant_id: str, sink: Sink) -> None:
        self.pool = pool
        self.tenant_id = tenant_id
        self.sink = sink
        self.host: Host | None = None
        self.open: set[str] = set()  # "session" / "pairing" while the host holds one
        self.settings: Any = None
        self.lock = asyncio.Lock()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or not callable(getattr(NeonizeClient, name, None)):
            raise AttributeError(name)

        async def forward(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, args, kwargs)

        forward.__name__ = name
        return forward

    async def call(self, method: str, args: Any, kwargs: Any) -> Any:
        if method not in _LIFECYCLE:
            return await self._on_host(method, args, kwargs)
        async with self.lock:
            if method == "configure":
                self.settings = (args, kwargs)
            if method in _ENDS:
                self.open.clear()
                if self.host is None or not self.host.alive:
                    if method == "stop":
                        return None  # no host holds a session of ours: stopped already
            result = await self._on_host(method, args, kwargs)
            if method in _OPENS:
                self.open.add(_OPENS[method])
            elif method == "remove" and self.host is not None:
                self.host.tenants.discard(self.tenant_id)  # its place goes to the next tenant
                self.host = None
            return result

    async def _on_host(self, method: str, args: Any, kwargs: Any) -> Any:
        host = self.host
        if host is None or not host.alive:
            host = await self.pool.place(self)
            if self.settings is not None and method != "configure":
                await host.call(self.tenant_id, "configure", *self.settings)
        return await host.call(self.tenant_id, method, args, kwargs)

    def host_lost(self, reason: str) -> None:
        """Our host died: report what ended with it (the supervisor backs off as usual)."""
        self.host = None
        lost, self.open = self.open, set()
        if "session" in lost:
            self.sink(ClientDead(error=reason))
        if "pairing" in lost:
            self.sink(PairFailed(reason=reason))

    async def move(self, new: Host) -> None:
        """Move to a fresh host (recycling): stop here, reconnect there if we had a session."""
        async with self.lock:
            old, had_session = self.host, "session" in self.open
            if old is None or old is new:
                return
            if had_session and old.alive:
                with contextlib.suppress(Exception):
                    await old.call(self.tenant_id, "stop", (), {})
            old.tenants.discard(self.tenant_id)
            self.host, self.open = new, set()
            new.tenants.add(self.tenant_id)
            if not had_session:
                return
            try:
                if self.settings is not None:
                    await new.call(self.tenant_id, "configure", *self.settings)
                await new.call(self.tenant_id, "connect", (), {})
                self.open.add("session")
            except Exception as e:
                self.sink(ClientDead(error=f"moving to a fresh engine host failed: {e}"))


class HostPool:
    """The neonize Engine with `neonize.hosts` > 0. See the module docstring."""

    name = "neonize"
    paired_state_in_db = True

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        hosts: int,
        tenants_per_host: int = 64,
        proxy: str | None = None,
        recycle_fds: int | None = None,
        recycle_rss_mb: float | None = None,
        pair_timeout_s: float = 180.0,
        stop_grace_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self.size = hosts
        self.tenants_per_host = tenants_per_host
        self.recycle_fds = recycle_fds
        self.recycle_rss_mb = recycle_rss_mb
        self.stop_grace_s = stop_grace_s
        self.host_options: dict[str, Any] = {
            "tenants": tenants_per_host,
            "proxy": proxy,
            "pair_timeout_s": pair_timeout_s,
            "stop_grace_s": stop_grace_s,
        }
        self.host_argv: list[str] = [sys.executable, "-m", "oxyd.neonize.host"]
        self.start_timeout_s = 60.0
        self.recycle_check_s = 30.0
        # Restart backoff of a crashed host: doubles per crash in a row, reset after a stable run.
        self.restart_base_s = 1.0
        self.restart_cap_s = 60.0
        self.stable_after_s = 60.0
        # Set by the app: the supervisor's connect limit, so recycling moves are staggered.
        self.connect_slot: Callable[[], Any] | None = None
        self.rng = rng or random.Random()
        self.hosts: list[Host] = []
        self.clients: dict[str, HostedClient] = {}
        self.crashes = 0
        self.restarts = 0
        self.last_resources: list[dict[str, Any]] = []  # the latest sample, for /metrics
        self.recycled = 0
        self.closing = False
        self._numbers = itertools.count(1)
        self._streaks: dict[int, int] = {}
        self._restart_tasks: set[asyncio.Task] = set()
        self._monitor: asyncio.Task | None = None
        self._started = False
        self._start_lock = asyncio.Lock()

    # ---- Engine ----

    def client(self, tenant_id: str, sink: Sink) -> HostedClient:
        if not valid_tenant_id(tenant_id):
            raise ValueError(f"invalid tenant id {tenant_id!r}")
        c = self.clients.get(tenant_id)
        if c is None:
            c = self.clients[tenant_id] = HostedClient(self, tenant_id, sink)
        else:
            c.sink = sink
        return c

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            self._started = True
            hosts = [Host(self, next(self._numbers)) for _ in range(self.size)]
            self.hosts.extend(hosts)
            results = await asyncio.gather(*(h.start() for h in hosts), return_exceptions=True)
            for h, r in zip(hosts, results, strict=True):
                if isinstance(r, BaseException):
                    log.error("engine host %d: %s", h.number, r)
            self._monitor = asyncio.ensure_future(self._watch_resources())

    async def close(self) -> bool:
        """Stop every host in parallel, each within the grace period."""
        self.closing = True
        for t in [*self._restart_tasks, self._monitor]:
            if t is not None:
                t.cancel()
        live = [h for h in self.hosts if h.alive]
        results = await asyncio.gather(
            *(h.close(self.stop_grace_s) for h in live), return_exceptions=True
        )
        return all(r is True for r in results)

    def stuck(self) -> bool:
        return False  # a stuck Go thread is a host's problem: close() kills the host

    def live_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h.alive and not h.draining]

    async def place(self, client: HostedClient) -> Host:
        await self.start()
        if self.closing:
            raise EngineError("engine is shutting down")
        room = [h for h in self.live_hosts() if len(h.tenants) < self.tenants_per_host]
        if not room:
            if not self.live_hosts():
                raise EngineError("no engine host is running (restarting after a crash)")
            raise EngineError(
                f"every engine host is full ({self.size} x {self.tenants_per_host} tenants):"
                " raise neonize.hosts or neonize.tenants_per_host"
            )
        host = min(room, key=lambda h: (len(h.tenants), h.number))
        host.tenants.add(client.tenant_id)
        client.host = host
        return host

    def deliver(self, tenant_id: str, event: Any) -> None:
        c = self.clients.get(tenant_id)
        if c is None:
            return
        try:
            c.sink(event)
        except Exception:
            log.exception("neonize %s: sink failed on %s", tenant_id, type(event).__name__)

    # ---- crashes ----

    def host_ended(self, host: Host) -> None:
        for tid in sorted(host.tenants):
            c = self.clients.get(tid)
            if c is not None and c.host is host:
                c.host_lost(host.reason)
        host.tenants.clear()
        if self.closing or host.draining or host not in self.hosts:
            return  # shut down on purpose, or a restart attempt (its loop retries)
        log.error("%s", host.reason)
        self.crashes += 1
        task = asyncio.ensure_future(self._restart(host))
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, dead: Host) -> None:
        # A host that crashed soon after its start is likely to crash again: back off.
        quick = time.monotonic() - dead.started_mono < self.stable_after_s
        streak = self._streaks[dead.number] = self._streaks.get(dead.number, 0) + 1 if quick else 0
        while not self.closing:
            if streak:
                delay = min(self.restart_cap_s, self.restart_base_s * 2 ** (streak - 1))
                await asyncio.sleep(delay * (0.5 + self.rng.random() / 2))
            fresh = Host(self, dead.number)
            try:
                await fresh.start()
            except Exception as e:
                log.error("engine host %d: restart failed: %s", dead.number, e)
                streak = self._streaks[dead.number] = streak + 1
                continue
            if dead in self.hosts:
                self.hosts[self.hosts.index(dead)] = fresh
            else:
                self.hosts.append(fresh)
            self.restarts += 1
            return

    # ---- recycling ----

    async def resources(self) -> list[dict[str, Any]]:
        out = []
        for h in list(self.hosts):
            if not h.alive:
                continue
            with contextlib.suppress(Exception):
                res = await asyncio.wait_for(h.call(None, "resources", (), {}), 10)
                out.append({"host": h.number, "pid": h.pid, **res})
        self.last_resources = out
        return out

    def over_limit(self, res: dict[str, Any]) -> str | None:
        if self.recycle_fds and res.get("open_fds", 0) > self.recycle_fds:
            return f"{res['open_fds']} open fds > neonize.recycle_fds {self.recycle_fds}"
        rss_mb = res.get("rss_bytes", 0) / 1e6
        if self.recycle_rss_mb and rss_mb > self.recycle_rss_mb:
            return f"{rss_mb:.0f} MB RSS > neonize.recycle_rss_mb {self.recycle_rss_mb:g}"
        return None

    async def _watch_resources(self) -> None:
        """Samples every host (for /metrics) and recycles those past a limit."""
        while not self.closing:
            await asyncio.sleep(self.recycle_check_s)
            try:
                await self.check_recycling()
            except Exception:  # the next round tries again; a sample is never worth a crash
                log.exception("engine hosts: resource check failed")

    async def check_recycling(self) -> int:
        """Recycle every host over a limit, one after the other; returns how many."""
        done = 0
        for res in await self.resources():
            host = next((h for h in self.hosts if h.number == res["host"]), None)
            why = self.over_limit(res)
            if host is None or why is None or host.draining or self.closing:
                continue
            log.warning("engine host %d: %s; recycling it", host.number, why)
            try:
                await self.recycle(host)
                done += 1
            except Exception as e:
                log.error("engine host %d: recycling failed: %s", host.number, e)
        return done

    async def recycle(self, old: Host) -> None:
        """A fresh host takes over: tenants move one at a time (through the connect limit,
        when the app gave us one), then the old host is closed."""
        fresh = Host(self, next(self._numbers))
        await fresh.start()
        old.draining = True
        self.hosts.append(fresh)
        for tid in sorted(old.tenants):
            c = self.clients.get(tid)
            if c is None or c.host is not old:
                continue
            slot = self.connect_slot() if self.connect_slot else contextlib.nullcontext()
            async with slot:
                await c.move(fresh)
        await old.close(self.stop_grace_s)
        with contextlib.suppress(ValueError):
            self.hosts.remove(old)
        self.recycled += 1
