"""Operator commands on one tenant (add, remove, start, stop, restart, pair, logout,
settings, simulate), each under the tenant's lock."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from oxyd import datadir
from oxyd import model as m
from oxyd.clock import Clock
from oxyd.config import Config
from oxyd.engine import Engine
from oxyd.model import IDLE, PARKED, State
from oxyd.ratelimit import TokenBucket
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.supervision.errors import RateLimited, TenantError
from oxyd.supervision.runner import Runner

if TYPE_CHECKING:
    from oxyd.sender import Sender

# Operator restarts per tenant: each one tears down a WhatsApp session and dials again, and a
# script looping on POST .../restart would look like a reconnect storm to WhatsApp.
RESTART_BURST = 3
RESTARTS_PER_MIN = 6


class Commands:
    """The Supervisor's operator commands (a mixin: the members below are the Supervisor's)."""

    cfg: Config
    clock: Clock
    store: Store
    subs: outbox.Subscriptions
    engines: dict[str, Engine]
    runners: dict[str, Runner]
    sending: Sender
    _restart_buckets: dict[str, TokenBucket]

    if TYPE_CHECKING:  # the Supervisor's own (a stub here would shadow it)

        def runner(self, tenant_id: str) -> Runner: ...
        def tenant_json(self, r: Runner) -> dict[str, Any]: ...
        def publish(self, event: dict[str, Any]) -> None: ...

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


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
