"""The job scheduler on a real event loop: jobs fire, never overlap, survive errors, prune."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.triggers.cron import CronTrigger
from helpers import until
from loguru import logger

from oxyd.backup import create_backup, list_backups
from oxyd.clock import FakeClock
from oxyd.config import load as load_config
from oxyd.datadir import prepare
from oxyd.jobs import DAY_MS, Jobs
from oxyd.model import State, Tenant
from oxyd.store.db import Store

KEY = os.urandom(32)


@pytest.fixture
async def store(tmp_path):
    data = tmp_path / "data"
    prepare(data)
    s = await Store.open(data)
    yield s
    await s.close()


@pytest.fixture
def logs():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def config(tmp_path: Path, **env: str):
    return load_config(env={"OXYD_DATA_DIR": str(tmp_path / "data"), **env})


async def test_health_sweep_fires_and_survives_errors(tmp_path, store, logs):
    clock = FakeClock()
    now = clock.now_ms()
    await store.add_tenant(Tenant(id="old", created_at_ms=now - 31 * DAY_MS))
    await store.add_tenant(Tenant(id="young", created_at_ms=now - DAY_MS))
    await store.add_tenant(
        Tenant(id="paired", state=State.CONNECTED, jid="1@s", created_at_ms=now - 99 * DAY_MS)
    )
    calls = []

    async def sweep() -> dict:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {"total": 3, "alerts": []}

    cfg = config(tmp_path, OXYD_HEALTH_INTERVAL_S="0.02")
    jobs = Jobs(cfg, store=store, health_sweep=sweep, clock=clock)
    jobs.start()
    try:
        await until(lambda: len(calls) >= 3)
    finally:
        await jobs.stop()
    assert any("job health failed" in line for line in logs)
    assert jobs.last_health == {"total": 3, "alerts": [], "unpaired_stale": ["old"]}
    assert sum("never paired" in line for line in logs) == 1  # logged once, not every sweep
    n = len(calls)
    await asyncio.sleep(0.1)  # stopped: nothing fires any more
    assert len(calls) == n


async def test_scheduled_backups_fire_and_are_pruned_to_keep(tmp_path, store):
    data = tmp_path / "data"
    clock = FakeClock()
    made: list[Path] = []

    async def make_backup() -> Path:
        await clock.advance(60)  # distinct archive names
        path = await create_backup(data, KEY, clock=clock)
        made.append(path)
        return path

    cfg = config(tmp_path, OXYD_BACKUP_SCHEDULE="30 3 * * *", OXYD_BACKUP_KEEP="2")
    jobs = Jobs(cfg, store=store, health_sweep=_ok, make_backup=make_backup, clock=clock)
    finished: list[str] = []
    # Executed events come after apscheduler released the run's slot: the next run may start.
    jobs.scheduler.add_listener(lambda e: finished.append(e.job_id), EVENT_JOB_EXECUTED)
    jobs.start()
    try:
        job = jobs.scheduler.get_job("backup")
        assert isinstance(job.trigger, CronTrigger)
        assert (job.next_run_time.hour, job.next_run_time.minute) == (3, 30)
        for i in range(1, 5):
            jobs.run_soon("backup")  # the cron time, come early: the real scheduler path
            await until(lambda i=i: finished.count("backup") == i)
            assert len(made) == i and jobs.last_backup == made[-1]
            assert len(list_backups(data)) == min(i, 2)
        # After a fired run the cron trigger still points at its next 03:30.
        assert jobs.scheduler.get_job("backup").next_run_time.hour == 3
    finally:
        await jobs.stop()
    assert [b["path"] for b in list_backups(data)] == [str(made[3]), str(made[2])]
    assert await jobs.backup_now() == made[4]  # the manual trigger (POST /v1/backups) prunes too
    assert len(list_backups(data)) == 2


async def test_a_job_never_overlaps_itself(tmp_path, store):
    release = asyncio.Event()
    running = [0, 0]  # now, peak

    async def slow_backup() -> Path:
        running[0] += 1
        running[1] = max(running)
        try:
            await release.wait()
        finally:
            running[0] -= 1
        return tmp_path / "x"

    cfg = config(tmp_path, OXYD_BACKUP_SCHEDULE="0 * * * *")
    jobs = Jobs(cfg, store=store, health_sweep=_ok, make_backup=slow_backup)
    jobs.start()
    try:
        jobs.run_soon("backup")
        await until(lambda: running[0] == 1)
        for _ in range(3):
            jobs.run_soon("backup")
            await asyncio.sleep(0.01)
        assert running[1] == 1
        release.set()
        await until(lambda: running[0] == 0)
    finally:
        await jobs.stop()


async def test_stop_cancels_a_run_in_flight(tmp_path, store):
    started = asyncio.Event()
    cancelled = []

    async def hang() -> dict:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return {}

    jobs = Jobs(config(tmp_path, OXYD_HEALTH_INTERVAL_S="0.01"), store=store, health_sweep=hang)
    jobs.start()
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(jobs.stop(), 10)
    assert cancelled == [True]


async def test_retention_prunes_messages_outbox_and_optimizes(tmp_path, store, monkeypatch):
    clock = FakeClock()
    cutoffs: list[int] = []
    real_prune = store.prune_messages

    async def spy(before_ms: int, **kw) -> int:
        cutoffs.append(before_ms)
        return await real_prune(before_ms, **kw)

    monkeypatch.setattr(store, "prune_messages", spy)
    optimized = []
    real_optimize = store.optimize

    async def spy_optimize() -> None:
        optimized.append(True)
        await real_optimize()

    monkeypatch.setattr(store, "optimize", spy_optimize)
    outbox_runs = []

    async def prune_outbox() -> int:
        outbox_runs.append(True)
        return 3

    media_runs = []

    async def media_sweep() -> dict:
        media_runs.append(True)
        return {}

    cfg = config(tmp_path, OXYD_RETENTION_MESSAGES_DAYS="7.5")
    jobs = Jobs(
        cfg,
        store=store,
        health_sweep=_ok,
        prune_outbox=prune_outbox,
        media_sweep=media_sweep,
        clock=clock,
        retention_interval_s=0.02,
        optimize_interval_s=0.02,
        first_retention_after_s=0.0,
    )
    jobs.start()
    try:
        await until(
            lambda: (
                len(cutoffs) >= 2
                and len(outbox_runs) >= 2
                and len(optimized) >= 2
                and len(media_runs) >= 2
            )
        )
    finally:
        await jobs.stop()
    assert cutoffs[0] == clock.now_ms() - 7.5 * DAY_MS


async def test_no_retention_jobs_unless_configured(tmp_path, store):
    jobs = Jobs(config(tmp_path), store=store, health_sweep=_ok)
    jobs.start()
    try:
        # Bookkeeping (state changes, history syncs) is always bounded; messages only on demand.
        got = sorted(j.id for j in jobs.scheduler.get_jobs())
        assert got == ["health", "optimize", "prune_history"]
    finally:
        await jobs.stop()
    with pytest.raises(RuntimeError, match="not configured"):
        await jobs.backup_now()


async def _ok() -> dict:
    return {}


async def test_state_history_and_history_syncs_are_pruned_by_retention(tmp_path, store):
    clock = FakeClock(start_ms=100 * DAY_MS)
    await store.add_tenant(Tenant(id="a", engine="simulator", state_since_ms=0))
    old_ms, new_ms = clock.now_ms() - 40 * DAY_MS, clock.now_ms() - DAY_MS
    async with store.tx() as db:
        for at_ms in (old_ms, old_ms, new_ms):
            await db.execute(
                "INSERT INTO state_history (tenant, state, reason, at_ms)"
                " VALUES ('a','new',NULL,?)",
                (at_ms,),
            )
            await db.execute(
                "INSERT INTO history_syncs (tenant, sync_type, conversations, processed, stored,"
                " at_ms) VALUES ('a','RECENT',1,1,1,?)",
                (at_ms,),
            )
    jobs = Jobs(config(tmp_path), store=store, health_sweep=_ok, clock=clock)
    # The initial state_history row of add_tenant (at 0) is older than 30 days too.
    assert await jobs._prune_history() == 5
    left = await store.ro.execute_fetchall("SELECT at_ms FROM state_history")
    assert [r[0] for r in left] == [new_ms]
    assert len(await store.history_syncs("a")) == 1
    # A shorter message retention bounds them too.
    short = Jobs(
        config(tmp_path, OXYD_RETENTION_MESSAGES_DAYS="0.5"),
        store=store,
        health_sweep=_ok,
        clock=clock,
    )
    assert await short._prune_history() == 2
