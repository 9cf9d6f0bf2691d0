"""Storage faults: while the database cannot be written, writes are retried, /readyz answers
503, the failure shows in /metrics and the log, and once the fault clears nothing that was
accepted is lost.

1. Disk full, for real: the data directory on a 2 MB tmpfs (needs mount, i.e. root; skipped with
   the reason otherwise), filled by message ingest, then grown with `mount -o remount,size=`.
2. Read-only database, simulated: remounting the tmpfs read-only is refused while oxyd holds its
   files open ("mount point is busy"), and chmod does not stop an open connection (nor root), so
   the writer's transaction is made to fail with SQLite's own read-only error through a wrapper
   around `Writer._write` (the documented fallback).

What oxyd raises: an ERROR log line per failed attempt ("store write failed"), /readyz 503 with
checks.writer false, the `oxyd_writer_failing` gauge (1) / `oxyd_writer_failures_total` counter
in /metrics, a "storage" alert in the health sweep while it lasts, and an `alert.storage` webhook
event to the operator's destination once writes work again.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from loguru import logger
from reliakit import read_db, scale, until

from oxyd import app as oxyd_app
from oxyd.clock import RealClock
from oxyd.config import load
from oxyd.http.server import make_app
from oxyd.model import State
from oxyd.simulator.engine import SimulatorEngine

pytestmark = pytest.mark.timeout(scale(120, 600))
ADMIN = "storage-admin-token-0123456789"


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Harness:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.errors: list[str] = []

    async def start(self, monkeypatch) -> Harness:
        monkeypatch.setenv("OXYD_ADMIN_TOKEN", ADMIN)
        cfg = load(
            env={
                "OXYD_DATA_DIR": str(self.data),
                "OXYD_SUPERVISOR_STOP_GRACE_S": "2",
                "OXYD_STORE_BATCH_MAX": "200",
                # The operator's destination (alerts only); nothing listens: the event is
                # checked in the outbox.
                "OXYD_WEBHOOKS_URL": "http://127.0.0.1:9/alerts",
                "OXYD_WEBHOOKS_SECRET": "ops-secret",
            }
        )
        clock = RealClock()
        self.app = await oxyd_app.build(
            cfg, clock, {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
        )
        await oxyd_app.start(self.app)
        self.client = TestClient(TestServer(make_app(self.app)))
        await self.client.start_server()
        self._sink = logger.add(
            lambda m: self.errors.append(str(m)), level="ERROR", format="{message}"
        )
        return self

    async def close(self) -> None:
        logger.remove(self._sink)
        await self.client.close()
        await oxyd_app.stop(self.app)

    async def add(self, tid: str) -> None:
        await self.app.supervisor.add(tid, "simulator")
        await until(lambda: self.app.supervisor.runners[tid].t.state is State.CONNECTED, 10)

    async def ingest(self, tid: str, n: int, text: str) -> list[str]:
        """n messages accepted by the simulated server; returns their WhatsApp ids."""
        r = await self.client.post(
            f"/v1/tenants/{tid}/simulate",
            json={"action": "message", "chat": "15557770000", "text": text, "count": n},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status == 202, await r.text()
        ids = (await r.json())["ids"]
        assert len(ids) == n
        return ids

    async def ready(self) -> tuple[int, dict]:
        r = await self.client.get("/readyz")
        return r.status, await r.json()

    async def metric(self, name: str) -> float:
        r = await self.client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status == 200
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")


async def _fault_cycle(h: Harness, start_fault, clear_fault, fill: bool) -> dict:
    """Ingest until writes fail, keep accepting during the fault, clear it, verify."""
    app = h.app
    await h.add("a")
    accepted: list[str] = await h.ingest("a", 200, "before the fault")
    await app.writer.flush()
    assert await h.ready() == (
        200,
        {"status": "ready", "checks": {"database": True, "supervisor": True, "writer": True}},
    )
    await start_fault()
    big = "x" * 4000
    if fill:
        # Fill the disk: keep ingesting until the writer reports failure.
        async def full() -> bool:
            if not app.writer.failing:
                accepted.extend(await h.ingest("a", 50, big))
            return app.writer.failing

        await until(full, 60, "the writer failing on a full disk", step_s=0.02)
    else:
        accepted.extend(await h.ingest("a", 50, big))
        await until(lambda: app.writer.failing, 10, "the writer failing")
    # Accepted during the fault: held by the writer (or queued), not dropped.
    for _ in range(5):
        accepted.extend(await h.ingest("a", 100, "during the fault"))
    code, body = await h.ready()
    assert code == 503 and body["checks"]["writer"] is False, body
    assert body["status"] == "not_ready"
    assert await h.metric("oxyd_writer_failing") == 1
    failures0 = app.writer.stats.failures
    await until(lambda: app.writer.stats.failures >= failures0 + 3, 30, "writes retried")
    assert app.writer.failing and (await h.ready())[0] == 503
    assert any("store write failed" in e for e in h.errors), h.errors[:3]
    assert app.supervisor.runners["a"].t.state is State.CONNECTED
    sweep = await app.supervisor.health_sweep()
    assert any(a["state"] == "storage" for a in sweep["alerts"]), sweep["alerts"]
    figures = {
        "failures": app.writer.stats.failures,
        "accepted": len(accepted),
        "last_error": app.writer.stats.last_error,
    }

    await clear_fault()
    await until(lambda: not app.writer.failing, 30, "the writer recovering")
    await until(lambda: app.supervisor.runners["a"].queue_depth == 0, 30, "queue drained")
    await app.writer.flush()
    assert (await h.ready())[0] == 200
    assert await h.metric("oxyd_writer_failing") == 0
    assert await h.metric("oxyd_writer_failures_total") >= 3
    assert app.writer.stats.rejected == 0, "the writer gave up on some rows"
    alerts = read_db(app.store.path, "SELECT count(*) FROM outbox WHERE type = 'alert.storage'")
    assert alerts[0][0] == 1, "no alert.storage event for the operator"
    stored = read_db(
        app.store.path, "SELECT wa_id, count(*) FROM messages WHERE tenant = 'a' GROUP BY wa_id"
    )
    counts = dict(stored)
    missing = [i for i in accepted if i not in counts]
    assert not missing, f"{len(missing)} of {len(accepted)} accepted messages lost"
    assert all(n == 1 for n in counts.values())
    assert len(counts) == len(set(accepted))
    return figures


async def test_disk_full_on_a_small_tmpfs(tmp_path, monkeypatch):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a size-limited file system")
    r = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(
            f"mounting a 2 MB tmpfs is not permitted here ({r.stderr.strip()}); "
            "test_read_only_database_simulated covers the writer's retry path"
        )
    h = None
    try:
        h = await Harness(mnt / "data").start(monkeypatch)

        async def start_fault() -> None:
            pass  # the disk fills up by itself

        async def clear_fault() -> None:
            await asyncio.to_thread(_sh, "mount", "-o", "remount,size=64m", str(mnt))

        figures = await _fault_cycle(h, start_fault, clear_fault, fill=True)
        print(f"disk full: {figures}")
        assert "full" in (figures["last_error"] or ""), figures
    finally:
        if h is not None:
            await h.close()
        await asyncio.to_thread(_sh, "umount", "-l", str(mnt))


async def test_read_only_database_simulated(tmp_path, monkeypatch):
    h = await Harness(tmp_path / "data").start(monkeypatch)
    writer = h.app.writer
    real_write = writer._write
    broken = asyncio.Event()

    async def failing_write(batch):
        if broken.is_set():
            # Exactly what sqlite3 raises on a database it may not write.
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return await real_write(batch)

    writer._write = failing_write

    async def start_fault() -> None:
        broken.set()

    async def clear_fault() -> None:
        broken.clear()

    try:
        figures = await _fault_cycle(h, start_fault, clear_fault, fill=False)
        print(f"read-only (simulated): {figures}")
    finally:
        await h.close()
