"""The durable outbox dispatcher: signed POSTs, per-destination order, retries that survive
restarts.

Every event row is already on disk (written in the same transaction as its data), so this
module only moves rows from 'pending' to 'delivered' or 'dead'. One worker task per
destination with pending rows sends them strictly in creation order; a slow or failing
destination only ever holds up its own worker. The retry schedule lives in the row
(attempts, next_attempt_ms), so a restarted process resumes exactly where it stopped.

Delivery is at-least-once: a row is marked delivered after the receiver answered 2xx, in
small batches, so a crash in between re-sends a few events. Receivers dedup by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import aiosqlite
from loguru import logger

from oxyd.clock import Clock
from oxyd.config import WebhooksConfig
from oxyd.destinations import Guard, GuardedResolver, forbidden_in, literal_reason
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.webhooks.attempt import (
    USER_AGENT,
    DispatchStats,
    Outcome,
    Target,
    backoff_s,
    describe_error,
    host_of,
    retry_after_s,
    sign,
)

BATCH_ROWS = 100  # rows read per query, and delivered marks committed per transaction
POLL_S = 1.0  # safety net for commits that nobody kick()ed
CONNECTIONS_MAX = 100
STOP_GRACE_S = 1.0  # on top of timeout_s: the longest an in-flight POST can still take


class Dispatcher:
    def __init__(
        self,
        store: Store,
        cfg: WebhooksConfig,
        clock: Clock,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.guard = guard or Guard(allow_private=cfg.allow_private)
        # Guarded targets connect through a session whose resolver refuses forbidden
        # addresses, so a name that re-resolves to 127.0.0.1 (DNS rebinding) is caught too.
        self._guarded: aiohttp.ClientSession | None = None
        self.clock = clock
        self.stats = DispatchStats()
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._workers: dict[str, asyncio.Task] = {}
        self._pokes: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._kicks = 0
        self._stopping = False
        self._scanner: asyncio.Task | None = None
        self._rng = random.Random()
        self._reader: aiosqlite.Connection | None = None

    @property
    def _ro(self) -> aiosqlite.Connection:
        # Before start() (or after stop()) the store's reader is good enough for listings.
        return self._reader or self.store.ro

    # ---- lifecycle ----

    async def start(self) -> None:
        self._reader = await outbox.open_reader(self.store.path)
        if self._session_factory is not None:
            self._session = self._session_factory()
        else:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                connector=aiohttp.TCPConnector(limit=CONNECTIONS_MAX, limit_per_host=20),
                headers={"User-Agent": USER_AGENT},
            )
        if not self.guard.allow_private:
            self._guarded = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                connector=aiohttp.TCPConnector(
                    limit=CONNECTIONS_MAX, limit_per_host=20, resolver=GuardedResolver(self.guard)
                ),
                headers={"User-Agent": USER_AGENT},
            )
        self._stopping = False
        self._scanner = asyncio.create_task(self._scan_loop(), name="oxyd-webhooks")

    async def stop(self) -> None:
        """In-flight POSTs get timeout_s to finish and their rows are marked; whatever is not
        marked stays pending on disk and goes out after the next start."""
        self._stopping = True
        self._wake.set()
        for ev in self._pokes.values():
            ev.set()
        tasks = [t for t in (self._scanner, *self._workers.values()) if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.cfg.timeout_s + STOP_GRACE_S)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._scanner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._guarded is not None:
            await self._guarded.close()
            self._guarded = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    def kick(self) -> None:
        """Something was committed to the outbox: look now instead of at the next poll.
        Cheap and synchronous; call it from the event loop after each commit."""
        self._kicks += 1
        self._wake.set()

    async def webhook_changed(self, tenant_id: str | None = None) -> None:
        """A destination's URL or secret changed: its pending events go to the new address
        now, not after the backoff the old address earned."""
        dest = outbox.destination_of(tenant_id)
        await outbox.retry_now(self.store, dest, self.clock.now_ms())
        self._poke(dest)

    def _poke(self, dest: str) -> None:
        ev = self._pokes.get(dest)
        if ev is not None:
            ev.set()
        self.kick()

    # ---- operations for the HTTP layer and jobs ----

    async def dead(self, tenant_id: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead events of a tenant's destination (None: the global one), newest first."""
        return await outbox.dead(self._ro, outbox.destination_of(tenant_id), limit)

    async def replay(self, tenant_id: str | None) -> int:
        n = await outbox.replay(self.store, outbox.destination_of(tenant_id), self.clock.now_ms())
        if n:
            self._poke(outbox.destination_of(tenant_id))
        return n

    async def prune(self) -> int:
        before_ms = self.clock.now_ms() - int(self.cfg.retention_s * 1000)
        return await outbox.prune(self.store, before_ms)

    async def pending(self) -> int:
        return await outbox.pending_count(self._ro)

    async def counts(self) -> dict[str, int]:
        return await outbox.counts(self._ro)

    @property
    def active_destinations(self) -> int:
        return len(self._workers)

    # ---- internals ----

    async def _scan_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                for dest in await outbox.pending_destinations(self._ro):
                    self._ensure_worker(dest)
            except Exception as e:
                logger.opt(exception=e).error("webhook outbox scan failed")
            await self._wait(self._wake, POLL_S)

    def _ensure_worker(self, dest: str) -> None:
        if self._stopping or dest in self._workers:
            return
        self._pokes[dest] = asyncio.Event()
        self._workers[dest] = asyncio.create_task(self._work(dest), name=f"oxyd-webhook-{dest}")

    async def _wait(self, event: asyncio.Event, delay_s: float) -> None:
        """Sleep on the clock until `delay_s` passes or `event` is set."""
        if event.is_set():
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(delay_s))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    async def _resolve(self, dest: str) -> Target | None:
        """Read at delivery time, so a changed URL or secret applies to pending events."""
        tenant = outbox.destination_tenant(dest)
        if tenant is None:
            if self.cfg.url and self.cfg.secret:
                return Target(self.cfg.url, self.cfg.secret)
            return None
        hook = await outbox.webhook(self._ro, tenant)
        return Target(*hook) if hook else None

    async def _work(self, dest: str) -> None:
        poke = self._pokes[dest]
        log = logger.bind(destination=dest)
        marks = outbox.DeliveredMarks(self.store, self.clock, BATCH_ROWS)
        try:
            while not self._stopping:
                kicks = self._kicks
                poke.clear()
                # Rows delivered but not yet marked are still 'pending' on disk: read past them.
                after_id = marks.last_id if marks.unsettled else 0
                rows = await outbox.head(self._ro, dest, BATCH_ROWS, after_id)
                if not rows:
                    if marks.unsettled:
                        await marks.settle()
                    elif kicks == self._kicks:
                        return
                    continue  # marks settled, or a commit raced our query: look again
                target = await self._resolve(dest)
                if target is None:
                    await marks.settle()
                    # Dead, not dropped: re-adding the webhook and replaying sends them.
                    reason = "no webhook configured for this destination"
                    n = await outbox.kill_pending(self.store, dest, reason, self.clock.now_ms())
                    self.stats.dead += n
                    log.warning("{} pending webhook events marked dead: {}", n, reason)
                    continue
                for row in rows:
                    if self._stopping or poke.is_set():
                        break
                    wait_ms = row.next_attempt_ms - self.clock.now_ms()
                    if wait_ms > 0:
                        await marks.settle()
                        await self._wait(poke, wait_ms / 1000)
                        break  # read again: a replay or a new URL may have changed the head
                    outcome = await self._send(target, row)
                    if outcome.ok:
                        self.stats.delivered += 1
                        marks.add(row.id)
                        continue
                    await marks.settle()
                    await self._failed(row, outcome, target, log)
                    # Read again: a retry waits for its next_attempt_ms, and a dead row may
                    # have taken expired ones with it.
                    break
                marks.flush()
                if poke.is_set():
                    await marks.settle()  # a replay may have put rows before our last one
        except Exception as e:
            # A bug or the database failing: the rows stay pending, the next scan restarts us.
            log.opt(exception=e).error("webhook worker failed")
        finally:
            # Marks first: while we are still registered, no second worker re-sends these.
            with contextlib.suppress(Exception):
                await marks.settle()
            self._workers.pop(dest, None)
            self._pokes.pop(dest, None)

    async def _failed(self, row: outbox.Row, outcome: Outcome, target: Target, log) -> None:
        attempts = row.attempts + 1
        now_ms = self.clock.now_ms()
        error = outcome.error or "failed"
        too_old = now_ms - row.created_at_ms > self.cfg.max_age_s * 1000
        what = f"webhook {row.event_id} to {host_of(target.url)} failed ({error})"
        if not outcome.retry:
            self.stats.failed_4xx += 1
            await outbox.mark_dead(self.store, row.id, attempts, error, now_ms)
            log.warning("{}: dead, not retried", what)
            return
        if attempts >= self.cfg.max_attempts or too_old:
            self.stats.dead += 1
            why = "too old" if too_old else f"{attempts} attempts"
            await outbox.mark_dead(self.store, row.id, attempts, f"{error} ({why})", now_ms)
            # The destination is failing: everything else past max_age goes too, in one
            # statement, instead of one failed request each after a long outage.
            cutoff_ms = now_ms - int(self.cfg.max_age_s * 1000)
            n = await outbox.kill_pending(
                self.store,
                row.destination,
                f"{error} (too old)",
                now_ms,
                created_before_ms=cutoff_ms,
            )
            self.stats.dead += n
            log.warning("{}: dead after {}; {} more expired", what, why, n)
            return
        self.stats.retried += 1
        delay_s = outcome.retry_after_s
        if delay_s is None:
            delay_s = backoff_s(attempts, self.cfg.retry_base_s, self.cfg.retry_cap_s, self._rng)
        delay_s = min(delay_s, self.cfg.max_age_s)
        next_ms = now_ms + round(delay_s * 1000)
        await outbox.mark_retry(self.store, row.id, attempts, next_ms, error)
        log.info("{}, attempt {}; retry in {:.2f}s", what, attempts, delay_s)

    async def _send(self, target: Target, row: outbox.Row) -> Outcome:
        assert self._session is not None
        session = self._session
        if target.guarded and not self.guard.allow_private:
            # IP literals are connected to without resolving: check them here.
            why = literal_reason(self.guard, target.url)
            if why is not None:
                return Outcome(False, retry=False, error=f"forbidden destination: {why}")
            session = self._guarded or self._session
        body = row.body.encode()
        timestamp = str(self.clock.now_ms() // 1000)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Oxyd-Event-Id": row.event_id,
            "X-Oxyd-Timestamp": timestamp,
            "X-Oxyd-Signature": sign(target.secret, timestamp, body),
        }
        try:
            async with session.post(
                target.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            ) as resp:
                # Read a little so a keep-alive connection can be reused for small answers.
                await resp.content.read(1024)
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.InvalidURL, ValueError) as e:
            return Outcome(
                False, retry=False, error=describe_error(e, target.url, self.cfg.timeout_s)
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            forbidden = forbidden_in(e)
            if forbidden is not None:  # it resolved to a forbidden address: never retried
                return Outcome(False, retry=False, error=f"forbidden destination: {forbidden}")
            return Outcome(
                False, retry=True, error=describe_error(e, target.url, self.cfg.timeout_s)
            )
        if 200 <= status < 300:
            return Outcome(True)
        error = f"HTTP {status}"
        if status >= 500 or status in (408, 429):
            wait_s = retry_after_s(retry_after, self.clock.now_ms() / 1000)
            return Outcome(False, retry=True, error=error, retry_after_s=wait_s)
        # Other 4xx (and redirects, which a signed POST must not follow): the receiver says
        # this request will never work, so retrying would only hammer it.
        return Outcome(False, retry=False, error=error)
