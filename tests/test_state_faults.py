"""A state write that fails for a moment (disk full) does not kill a healthy session."""

import asyncio
import shutil
import sqlite3
import subprocess

import pytest
from helpers import until
from http_helpers import Harness


async def test_a_failed_state_write_keeps_the_session_and_heals(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch, OXYD_SIMULATOR_CONNECT_LATENCY_MS="20")
    try:
        await hx.add("a")
        sup = hx.app.supervisor
        r = sup.runners["a"]
        store = hx.app.store
        real_save = store.save_state
        full = {"on": True}

        async def save_state(t, rows=()):
            if full["on"]:
                raise sqlite3.OperationalError("database or disk is full")
            return await real_save(t, rows)

        monkeypatch.setattr(store, "save_state", save_state)
        # The connection drops and comes back while no state can be written.
        resp = await hx.req("POST", "/v1/tenants/a/simulate", json={"action": "disconnect"})
        assert resp.status == 202
        await until(lambda: sup.reconnects["a"] >= 1, 10, "the library reconnecting")
        assert r.t.state == "connected" and r.t.failures == 0 and r.running
        assert sup.unsaved_states == 1 and sup.broken is None
        full["on"] = False
        await until(lambda: sup.unsaved_states == 0, 10, "the deferred state written")
        rows = await store.ro.execute_fetchall("SELECT state FROM tenants WHERE id='a'")
        assert rows[0][0] == "connected"
        history = await store.state_history("a")
        assert history[0]["state"] == "connected"
        resp = await hx.req("GET", "/readyz", None)
        assert resp.status == 200
        # Messages keep flowing the whole time.
        body = {"action": "message", "chat": "15551234567", "text": "x", "count": 10}
        await hx.req("POST", "/v1/tenants/a/simulate", json=body)
        await until(lambda: r.t.messages_stored == 10, 10)
    finally:
        await hx.close()


async def test_broken_clears_once_dead_tenant_tasks_run_again(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("a")
        sup = hx.app.supervisor
        r = sup.runners["a"]

        async def boom(mode, phone):
            raise RuntimeError("a bug")

        monkeypatch.setattr(r, "_life", boom)
        await r.cancel()
        r.spawn("connect")
        await until(lambda: sup.broken is not None, 10, "the supervisor marked broken")
        resp = await hx.req("GET", "/readyz", None)
        assert resp.status == 503
        monkeypatch.undo()
        monkeypatch.setenv("OXYD_ADMIN_TOKEN", "admin-token-for-tests-0123456789")
        await sup.health_sweep()  # restarts the dead task
        await until(lambda: r.t.state == "connected" and r.running, 10)
        await sup.health_sweep()
        assert sup.broken is None
        resp = await hx.req("GET", "/readyz", None)
        assert resp.status == 200
    finally:
        await hx.close()


async def test_a_real_disk_full_window_during_state_writes(tmp_path, monkeypatch):
    """The data directory on a small tmpfs, filled to the last byte while the tenant's
    connection drops and comes back: the session survives, then the state reaches the disk."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a size-limited file system")
    r = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()})")
    hx = None
    try:
        hx = await Harness.start(mnt, monkeypatch, OXYD_SIMULATOR_CONNECT_LATENCY_MS="20")
        await hx.add("a")
        sup, store = hx.app.supervisor, hx.app.store
        r_a = sup.runners["a"]
        history_before = len(await store.state_history("a"))
        filler = mnt / "filler"

        def fill() -> None:
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass  # ENOSPC: the disk is full

        await asyncio.to_thread(fill)
        resp = await hx.req("POST", "/v1/tenants/a/simulate", json={"action": "disconnect"})
        assert resp.status == 202
        await until(lambda: sup.reconnects["a"] >= 1, 10, "the library reconnecting")
        await until(lambda: sup.unsaved_states == 1, 10, "the state write failing")
        assert r_a.t.state == "connected" and r_a.t.failures == 0 and r_a.running
        assert sup.broken is None
        filler.unlink()  # the window closes
        await until(lambda: sup.unsaved_states == 0, 20, "the deferred state written")
        assert len(await store.state_history("a")) > history_before
        await until(lambda: _ready(hx), 20, "/readyz back to 200 by itself")
    finally:
        if hx is not None:
            await hx.close()
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mnt)], capture_output=True)


async def _ready(hx) -> bool:
    resp = await hx.req("GET", "/readyz", None)
    return resp.status == 200
