"""Engine hosts, daemon side: `neonize.hosts: N` runs the neonize clients in N child processes.

In one process every connect holds neonize's gate for a whole whatsmeow Connect() and one Go
`fatal error` ends every tenant; each host (oxyd/neonize/host.py) has its own Go runtime, gate
and thread pool, so connects run N at a time and a crash ends one host's tenants only.

- HostPool is the Engine the supervisor sees; HostedClient forwards every NeonizeClient method
  by name (no per-method code: methods added to NeonizeClient work over the pipe at once);
  oxyd/neonize/link.py is the daemon's end of one host process.
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
import logging
import pathlib
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from oxyd.engine import EngineError, Sink
from oxyd.model import ClientDead, PairFailed, valid_tenant_id
from oxyd.neonize.client import NeonizeClient
from oxyd.neonize.link import Host

log = logging.getLogger("oxyd.neonize.pool")


# Calls that open or end a tenant's session: serialised per tenant (a move between hosts must
# not interleave with them) and tracked, so a host's death tells the tenant what it lost.
_OPENS = {"connect": "session", "pair": "pairing"}
_ENDS = {"stop", "logout", "remove"}
_LIFECYCLE = {*_OPENS, *_ENDS, "configure"}


class HostedClient:
    """A tenant's client in an engine host: every public NeonizeClient method, forwarded."""

    reuses_message_ids = NeonizeClient.reuses_message_ids  # data, not forwarded by __getattr__

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
