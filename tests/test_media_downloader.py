"""The download service on real SQLite and real files, with a fake client behind the engine
Protocol and a fake clock: fairness between tenants, the concurrency bound, transient
failures with backoff, a corrupt download never stored, offline tenants costing no attempt,
history media only when asked."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from helpers import until

from oxyd import model as m
from oxyd.clock import FakeClock
from oxyd.config import MediaConfig
from oxyd.engine import EngineError, NotConnected
from oxyd.media import files
from oxyd.media.downloader import Downloads
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.store.media import MediaTable
from oxyd.store.writer import Writer


def content(ref: str) -> bytes:
    return f"file {ref}".encode() * 100


class FakeClient:
    """Stands in for an engine's client: serves `content(ref)`, records calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.running = 0
        self.peak = 0
        self.gate: asyncio.Event | None = None
        self.fail: dict[str, list] = {}

    async def download_media(self, ref: str, dest: str, max_bytes: int) -> dict:
        self.calls.append(ref)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            plan = self.fail.get(ref)
            if plan:
                outcome = plan.pop(0)
                if isinstance(outcome, Exception):
                    raise outcome
                data = outcome
            else:
                data = content(ref)
            await asyncio.to_thread(_write, dest, data)
            return {"status": "ok", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        finally:
            self.running -= 1

    async def request_media_reupload(self, ref, chat, sender, wa_id, from_me) -> str:
        raise EngineError("not in this test")


def _write(dest: str, data: bytes) -> None:
    with open(dest, "wb") as f:
        f.write(data)


def media_msg(tenant: str, i: int, *, history: bool = False) -> m.Message:
    ref = f"{tenant}-{i}"
    data = content(ref)
    return m.Message(
        wa_id=f"W{i}",
        chat="1555@s.whatsapp.net",
        sender="1555@s.whatsapp.net",
        from_me=False,
        sent_at_ms=1_700_000_000_000 + i,
        kind="image",
        media=m.Media(
            mime="image/jpeg",
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            ref=ref,
        ),
        from_history=history,
    )


class Rig:
    def __init__(self, tmp_path, cfg: MediaConfig) -> None:
        self.tmp_path, self.cfg = tmp_path, cfg
        self.clock = FakeClock()
        self.client = FakeClient()
        self.connected = True

    async def __aenter__(self) -> Rig:
        self.store = await Store.open(self.tmp_path)
        subs = outbox.Subscriptions(None)
        self.writer = Writer(self.store, self.clock, subs)
        self.writer.media_cfg = self.cfg
        self.writer.start()
        self.table = MediaTable(self.store, subs)
        self.downloads = Downloads(
            self.cfg,
            self.tmp_path,
            self.table,
            self.clock,
            lambda t: (self.client, self.connected),
        )
        self.writer.on_media = self.downloads.wake
        await self.downloads.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.downloads.stop()
        await self.writer.stop()
        await self.store.close()

    async def put(self, tenant: str, msgs) -> None:
        for msg in msgs:
            await self.writer.put(tenant, msg)
        await self.writer.flush()

    async def status(self, tenant: str, wa_id: str):
        return await self.table.by_wa_id(tenant, wa_id)

    async def statuses(self) -> dict[str, int]:
        return await self.table.counts()


async def test_one_tenants_backlog_does_not_starve_another(tmp_path):
    async with Rig(tmp_path, MediaConfig(concurrency=1)) as rig:
        rig.client.gate = asyncio.Event()
        await rig.put("bulk", [media_msg("bulk", i) for i in range(60)])
        await until(lambda: len(rig.client.calls) == 1)
        await rig.put("small", [media_msg("small", i) for i in range(2)])
        rig.client.gate.set()
        await until(lambda: len(rig.client.calls) == 62, 20)
        order = rig.client.calls
        # both of the small tenant's files go within its first turns, not after 60 videos
        assert max(order.index("small-0"), order.index("small-1")) <= 5, order[:8]
        await until(lambda: _count_stored(rig, 62), 5)
        assert rig.client.peak == 1


async def test_concurrency_is_bounded(tmp_path):
    async with Rig(tmp_path, MediaConfig(concurrency=3)) as rig:
        rig.client.gate = asyncio.Event()
        await rig.put("a", [media_msg("a", i) for i in range(10)])
        await until(lambda: rig.client.running == 3)
        await asyncio.sleep(0.05)
        assert rig.client.running == 3 and rig.downloads.in_flight == 3
        rig.client.gate.set()
        await until(lambda: len(rig.client.calls) == 10, 10)
        assert rig.client.peak == 3


async def test_transient_failures_back_off_then_fail_for_good(tmp_path):
    cfg = MediaConfig(max_attempts=3, retry_base_s=10, retry_cap_s=100)
    async with Rig(tmp_path, cfg) as rig:
        rig.client.fail["a-0"] = [EngineError("connection reset")] * 5
        rig.client.fail["a-1"] = [b"garbage, not the announced file"]
        await rig.put("a", [media_msg("a", 0), media_msg("a", 1)])

        async def attempts(wa_id: str) -> int:
            return (await rig.status("a", wa_id)).attempts

        await until(lambda: attempts("W0"), 5)
        assert rig.client.calls.count("a-0") == 1
        await asyncio.sleep(0.05)
        assert rig.client.calls.count("a-0") == 1  # waits for its backoff on the fake clock
        await rig.clock.advance(10)
        await until(lambda: rig.client.calls.count("a-0") == 2, 5)
        await rig.clock.advance(20)
        await until(lambda: rig.client.calls.count("a-0") == 3, 5)
        row = await until(lambda: _status_is(rig, "a", "W0", "failed"), 5, "W0 failed for good")
        assert "connection reset" in row.reason and "3 attempts" in row.reason
        # the corrupt download was retried and is stored now; the garbage never was
        await rig.clock.advance(10)
        row = await until(lambda: _status_is(rig, "a", "W1", "stored"), 5)
        assert row.sha256 == hashlib.sha256(content("a-1")).hexdigest()
        stored = files.listing(tmp_path, "a")
        assert list(stored) == [row.sha256]


async def _status_is(rig: Rig, tenant: str, wa_id: str, status: str):
    row = await rig.status(tenant, wa_id)
    return row if row.status == status else None


async def test_offline_tenant_costs_no_attempt(tmp_path):
    async with Rig(tmp_path, MediaConfig(max_attempts=1)) as rig:
        rig.connected = False
        await rig.put("a", [media_msg("a", 0)])
        row = await until(lambda: _reason(rig, "connect"), 5)
        assert row.status == "pending" and row.attempts == 0 and rig.client.calls == []
        rig.client.fail["a-0"] = [NotConnected("dropped")]
        rig.connected = True
        await rig.clock.advance(31)
        await until(lambda: rig.client.calls == ["a-0"], 5)
        row = await until(lambda: _reason(rig, "connect"), 5)
        assert row.status == "pending" and row.attempts == 0  # max_attempts=1 not spent
        await rig.clock.advance(31)
        await until(lambda: _status_is(rig, "a", "W0", "stored"), 5)


async def _reason(rig: Rig, word: str):
    row = await rig.status("a", "W0")
    return row if row.reason and word in row.reason else None


@pytest.mark.parametrize("history", [False, True])
async def test_history_media_only_with_media_history(tmp_path, history):
    async with Rig(tmp_path, MediaConfig(history=history)) as rig:
        msg = media_msg("a", 0, history=True)
        await rig.writer.put("a", m.HistorySync("INITIAL_BOOTSTRAP", 1, (msg,)))
        await rig.writer.flush()
        want = "stored" if history else "skipped"
        row = await until(lambda: _status_is(rig, "a", "W0", want), 5)
        if not history:
            assert "media.history" in row.reason and rig.client.calls == []


async def test_restart_resumes_pending_downloads(tmp_path):
    async with Rig(tmp_path, MediaConfig()) as rig:
        rig.connected = False
        await rig.put("a", [media_msg("a", i) for i in range(5)])
        await until(lambda: rig.downloads.queue_depth == 5, 5)
        partial = files.new_partial(tmp_path, "a")
        partial.write_bytes(b"left by a crash")
    async with Rig(tmp_path, MediaConfig()) as rig:
        assert not partial.exists()
        await rig.clock.advance(31)
        await until(lambda: len(rig.client.calls) == 5, 10)
        assert (await until(rig.statuses, 5)) and await _all_stored(rig, 5)


async def _all_stored(rig: Rig, n: int) -> bool:
    await until(lambda: _count_stored(rig, n), 5)
    return True


async def _count_stored(rig: Rig, n: int) -> bool:
    return (await rig.statuses()).get("stored", 0) == n


async def test_a_slow_disk_holds_new_transfers_back_not_the_others(tmp_path, monkeypatch):
    """fsync + rename run on the flush threads: while every one is taken (a slow disk), no
    new transfer starts; the default executor stays free (a transfer's writes, file
    serving); when the disk catches up, everything is stored."""
    import threading

    release = threading.Event()
    real_commit = files.commit

    def slow_commit(*args):
        release.wait(10)
        return real_commit(*args)

    monkeypatch.setattr(files, "commit", slow_commit)
    async with Rig(tmp_path, MediaConfig(concurrency=2)) as rig:
        await rig.put("a", [media_msg("a", i) for i in range(6)])
        d = rig.downloads
        await until(lambda: d.flusher.full and d.in_flight == 0, 10, "transfers held back")
        started = len(rig.client.calls)
        await asyncio.sleep(0.1)
        # at most concurrency transfers ran ahead of the flushes, then none
        assert len(rig.client.calls) == started <= 4 and d.in_flight == 0
        # the default executor is not held by the flushes
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 2) == 42
        release.set()
        await until(lambda: _count_stored(rig, 6), 10)
        assert len(rig.client.calls) == 6
