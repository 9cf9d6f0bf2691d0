"""The real `oxyd run`: one daemon per data directory, and the port bound before any tenant."""

import base64
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from helpers import free_port, oxyd_env, sync_until
from test_e2e_run import TOKEN, Daemon

pytestmark = pytest.mark.e2e


def _run(data_dir, port, *args, timeout_s=30, **env):
    return subprocess.run(
        [sys.executable, "-m", "oxyd", *args],
        env=oxyd_env(data_dir, port, TOKEN, **env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_second_daemon_on_one_directory_exits_75_and_the_first_is_untouched(tmp_path):
    d = Daemon(tmp_path / "data").start()
    try:
        assert d.call("POST", "/v1/tenants", {"id": "a", "engine": "simulator"})[0] == 201
        sync_until(lambda: d.states().get("a") == "connected", 10)
        r = _run(d.data_dir, free_port(), "run")
        assert r.returncode == 75, r.stderr
        assert f"data directory {d.data_dir} is in use by pid {d.proc.pid}" in r.stderr
        assert (d.data_dir / ".lock").read_text().strip() == str(d.proc.pid)
        # The second one never touched the tenant: no reconnect, no state change.
        _code, tenant = d.get("/v1/tenants/a")
        assert tenant["state"] == "connected"
        assert d.stop() == 0
    finally:
        d.kill()
    # The lock died with its holder (even after SIGKILL): a new daemon starts.
    d2 = Daemon(tmp_path / "data").start()
    try:
        d2.proc.kill()
        d2.proc.wait()
        d3 = Daemon(tmp_path / "data").start()
        sync_until(lambda: d3.states().get("a") == "connected", 10)
        assert d3.stop() == 0
    finally:
        d2.kill()


def test_port_in_use_exits_1_at_once_before_any_tenant_starts(tmp_path):
    d = Daemon(tmp_path / "data").start()
    assert d.call("POST", "/v1/tenants", {"id": "a", "engine": "simulator"})[0] == 201
    sync_until(lambda: d.states().get("a") == "connected", 10)
    assert d.stop() == 0
    con = sqlite3.connect(d.data_dir / "oxyd.sqlite3")
    history_before = con.execute("SELECT count(*) FROM state_history").fetchone()[0]
    con.close()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        started = time.monotonic()
        r = _run(d.data_dir, port, "run", timeout_s=20)
        elapsed_s = time.monotonic() - started
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "restoring" not in r.stderr  # no tenant was started
    assert elapsed_s < 15  # at once, not after a hang until SIGTERM
    con = sqlite3.connect(d.data_dir / "oxyd.sqlite3")
    assert con.execute("SELECT count(*) FROM state_history").fetchone()[0] == history_before
    con.close()


def test_restore_into_a_live_directory_is_refused_even_with_force(tmp_path):
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    d = Daemon(tmp_path / "data", OXYD_BACKUP_KEY=key).start()
    try:
        assert d.call("POST", "/v1/tenants", {"id": "a", "engine": "simulator"})[0] == 201
        sync_until(lambda: d.states().get("a") == "connected", 10)
        out = tmp_path / "snap.oxydbak"
        r = _run(d.data_dir, d.port, "backup", "--out", str(out), OXYD_BACKUP_KEY=key)
        assert r.returncode == 0, r.stderr  # a backup stays an online snapshot
        code, _ = d.call(
            "POST",
            "/v1/tenants/a/simulate",
            {"action": "message", "chat": "15551234567", "text": "after", "count": 50},
        )
        assert code == 202
        sync_until(lambda: d.get("/v1/tenants/a")[1]["messages_stored"] == 50, 10)
        for extra in ((), ("--force",)):
            r = _run(
                d.data_dir,
                d.port,
                "restore",
                str(out),
                "--data-dir",
                str(d.data_dir),
                *extra,
                OXYD_BACKUP_KEY=key,
            )
            assert r.returncode == 75, r.stderr
            assert f"is in use by pid {d.proc.pid}" in r.stderr
        assert d.stop() == 0
    finally:
        d.kill()
    # Nothing was replaced: every acknowledged message is still there after a restart.
    con = sqlite3.connect(d.data_dir / "oxyd.sqlite3")
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 50
    con.close()
    # Stopped, the same restore works.
    r = _run(
        d.data_dir,
        d.port,
        "restore",
        str(out),
        "--data-dir",
        str(d.data_dir),
        "--force",
        OXYD_BACKUP_KEY=key,
    )
    assert r.returncode == 0, r.stderr
