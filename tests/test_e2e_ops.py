"""Operations against the real `oxyd run` process: sd_notify and an online backup + restore."""

import base64
import os
import socket
import sqlite3
import subprocess
import sys

import pytest
from helpers import oxyd_env, sync_until
from test_e2e_run import TOKEN, Daemon

pytestmark = pytest.mark.e2e


def test_sd_notify_ready_after_restore_watchdog_then_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    d = Daemon(tmp_path / "data", NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    try:
        d.start()
        d.call("POST", "/v1/tenants", {"id": "a", "engine": "simulator"})
        got = []

        def read_until(word):
            while not any(word in m for m in got):
                got.append(sock.recv(4096).decode())

        read_until("READY=1")
        ready = next(m for m in got if "READY=1" in m)
        assert "STATUS=" in ready and "tenants" in ready
        read_until("WATCHDOG=1")
        assert d.stop() == 0
        read_until("STOPPING=1")
        firsts = [
            next(i for i, m in enumerate(got) if w in m)
            for w in ("READY=1", "WATCHDOG=1", "STOPPING=1")
        ]
        assert firsts == sorted(firsts)
    finally:
        d.kill()
        sock.close()


def test_backup_while_ingesting_then_restore_resumes_without_pairing(tmp_path):
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    d = Daemon(tmp_path / "data", OXYD_BACKUP_KEY=key)
    try:
        d.start()
        for tid in ("a", "b"):
            assert d.call("POST", "/v1/tenants", {"id": tid, "engine": "simulator"})[0] == 201
        sync_until(lambda: set(d.states().values()) == {"connected"}, 10)
        d.call("POST", "/v1/tenants/b/simulate", {"action": "replace"})
        sync_until(lambda: d.states().get("b") == "conflict", 10)
        d.call(
            "POST",
            "/v1/tenants/a/simulate",
            {"action": "message", "chat": "15551234567", "text": "x", "count": 30000},
        )
        out = tmp_path / "snap.oxydbak"
        env = oxyd_env(tmp_path / "data", d.port, TOKEN, OXYD_BACKUP_KEY=key)
        r = subprocess.run(
            [sys.executable, "-m", "oxyd", "backup", "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert d.stop() == 0
    finally:
        d.kill()
    restored = tmp_path / "restored"
    r = subprocess.run(
        [sys.executable, "-m", "oxyd", "restore", str(out), "--data-dir", str(restored)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(restored / "oxyd.sqlite3")
    snapshot = con.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    d2 = Daemon(restored)
    try:
        d2.start()
        sync_until(lambda: d2.states() == {"a": "connected", "b": "conflict"}, 10, "restored")
        _code, tenant = d2.get("/v1/tenants/a")
        assert tenant["messages_stored"] == snapshot
        assert d2.stop() == 0
    finally:
        d2.kill()
    # a wrong key writes nothing
    bad = tmp_path / "bad"
    env["OXYD_BACKUP_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    r = subprocess.run(
        [sys.executable, "-m", "oxyd", "restore", str(out), "--data-dir", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "key" in r.stderr.lower()
    assert not bad.exists() or not any(bad.iterdir())
