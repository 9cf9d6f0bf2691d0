"""Periodic jobs on the daemon's event loop: health sweep, scheduled backups, retention.

Each job runs at most once at a time (a slow run makes the next one skip, never pile up), and a
failing job is logged and tried again at its next time: a job never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from loguru import logger

from oxyd.backup import prune_backups
from oxyd.clock import RealClock
from oxyd.config import Config
from oxyd.model import State

DAY_MS = 86_400_000


class Jobs:
    def __init__(
        self,
        cfg: Config,
        *,
        store: Any,
        health_sweep: Callable[[], Awaitable[dict]],
        make_backup: Callable[[], Awaitable[Path]] | None = None,
        prune_outbox: Callable[[], Awaitable[int]] | None = None,
        media_sweep: Callable[[], Awaitable[Any]] | None = None,
        clock: Any = None,
        retention_interval_s: float = 3600.0,
        optimize_interval_s: float = 6 * 3600.0,
        first_retention_after_s: float = 300.0,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock or RealClock()
        self._health_sweep = health_sweep
        self._make_backup = make_backup
        self._prune_outbox = prune_outbox
        self._media_sweep = media_sweep
        self._intervals_s = (retention_interval_s, optimize_interval_s, first_retention_after_s)
        # Cron in UTC, like the names of the archives it writes.
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600},
        )
        self.last_health: dict | None = None
        self.last_backup: Path | None = None
        self._backup_lock = asyncio.Lock()
        self._running: set[asyncio.Task] = set()
        self._stopping = False
        self._stale_unpaired: list[str] = []

    def start(self) -> None:
        """Call from the running event loop."""
        # apscheduler logs every run at INFO: a health sweep a minute would drown the log.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        retention_s, optimize_s, first_s = self._intervals_s
        now = datetime.now(UTC)
        self._add("health", self._health, IntervalTrigger(seconds=self.cfg.health.interval_s))
        if self.cfg.backup.schedule and self._make_backup is not None:
            self._add("backup", self.backup_now, CronTrigger.from_crontab(self.cfg.backup.schedule))
        elif self.cfg.backup.schedule:
            logger.warning("backup.schedule is set but backups are unavailable (no key): skipped")
        if self.cfg.retention.messages_days is not None:
            self._add(
                "prune_messages",
                self._prune_messages,
                IntervalTrigger(seconds=retention_s),
                next_run_time=now + timedelta(seconds=first_s),
            )
        self._add(
            "prune_history",
            self._prune_history,
            IntervalTrigger(seconds=retention_s),
            next_run_time=now + timedelta(seconds=first_s),
        )
        if self._prune_outbox is not None:
            self._add(
                "prune_outbox",
                self._prune_outbox_job,
                IntervalTrigger(seconds=retention_s),
                next_run_time=now + timedelta(seconds=first_s),
            )
        if self._media_sweep is not None:
            self._add(
                "media_retention",
                self._media_sweep,
                IntervalTrigger(seconds=retention_s),
                next_run_time=now + timedelta(seconds=first_s),
            )
        self._add("optimize", self._optimize, IntervalTrigger(seconds=optimize_s))
        self.scheduler.start()

    async def stop(self) -> None:
        """Stop scheduling, cancel runs in flight and wait for them to unwind (before the store
        they use is closed)."""
        self._stopping = True
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # apscheduler shuts down in a loop callback
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def run_soon(self, job_id: str) -> None:
        """Fire a job now, through the scheduler (same overlap rules as a scheduled run)."""
        self.scheduler.modify_job(job_id, next_run_time=datetime.now(UTC))

    def _add(self, job_id: str, fn: Callable[[], Awaitable[Any]], trigger, **kw: Any) -> None:
        self.scheduler.add_job(
            functools.partial(self._guarded, job_id, fn), trigger, id=job_id, name=job_id, **kw
        )

    async def _guarded(self, job_id: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        if self._stopping:
            return None
        task = asyncio.current_task()
        self._running.add(task)
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("job {} failed; it runs again at its next time", job_id)
            return None
        finally:
            self._running.discard(task)

    # ---- the jobs ----

    async def _health(self) -> dict:
        result = await self._health_sweep()
        stale = await self._unpaired_older_than_limit()
        if stale != self._stale_unpaired:
            if stale:
                logger.warning(
                    "{} tenant(s) never paired for over {} days (not deleted): {}",
                    len(stale),
                    self.cfg.retention.unpaired_days,
                    ", ".join(stale),
                )
            self._stale_unpaired = stale
        if isinstance(result, dict):
            result = {**result, "unpaired_stale": stale}
        self.last_health = result
        return result

    async def _unpaired_older_than_limit(self) -> list[str]:
        cutoff_ms = self.clock.now_ms() - self.cfg.retention.unpaired_days * DAY_MS
        return [
            t.id
            for t in await self.store.tenants()
            if t.state == State.NEW and t.jid is None and t.created_at_ms < cutoff_ms
        ]

    async def backup_now(self) -> Path:
        """One backup, then prune to backup.keep. Serialised, so a manual backup (POST
        /v1/backups) and a scheduled one never run at once."""
        if self._make_backup is None:
            raise RuntimeError("backups are not configured (no backup key)")
        async with self._backup_lock:
            path = await self._make_backup()
            self.last_backup = path
            await asyncio.to_thread(prune_backups, Path(self.cfg.data_dir), self.cfg.backup.keep)
        return path

    async def _prune_history(self) -> int:
        # Never kept longer than the messages they describe.
        days = min(
            self.cfg.retention.history_days,
            self.cfg.retention.messages_days or self.cfg.retention.history_days,
        )
        cutoff_ms = self.clock.now_ms() - round(days * DAY_MS)
        n = await self.store.prune_bookkeeping(cutoff_ms)
        if n:
            logger.info("retention: {} state-change and history-sync records removed", n)
        return n

    async def _prune_messages(self) -> int:
        days = self.cfg.retention.messages_days
        cutoff_ms = self.clock.now_ms() - round(days * DAY_MS)
        removed = await self.store.prune_messages(cutoff_ms)
        if removed:
            logger.info("retention: removed {} message(s) older than {} days", removed, days)
        return removed

    async def _prune_outbox_job(self) -> int:
        removed = await self._prune_outbox()
        if removed:
            logger.info("retention: removed {} finished outbox row(s)", removed)
        return removed

    async def _optimize(self) -> None:
        await self.store.optimize()
