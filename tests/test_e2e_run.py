"""The real `oxyd run` process: probes, SIGTERM drain, restart and restore."""

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers import free_port, oxyd_env, sync_until

pytestmark = pytest.mark.e2e
TOKEN = "e2e-admin-token-0123456789"


class Daemon:
    def __init__(self, data_dir, port=None, **env):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc = None
        self.env = env

    def start(self):
        if getattr(self, "log", None) is not None:
            self.log.close()
        self.log = open(self.data_dir.parent / f"oxyd-{self.port}-{time.time_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oxyd", "run"],
            env=oxyd_env(self.data_dir, self.port, TOKEN, **self.env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        sync_until(lambda: self.get("/healthz")[0] == 200, 20, "daemon up")
        return self

    def call(self, method, path, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        except OSError:
            return 0, None

    def get(self, path):
        return self.call("GET", path)

    def states(self):
        code, body = self.get("/v1/tenants")
        return {t["id"]: t["state"] for t in body["tenants"]} if code == 200 else {}

    def stop(self, sig=signal.SIGTERM, timeout_s=10):
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.log.close()
        self.log = None
        return code

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()
            self.log = None


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data")
    yield d
    d.kill()


def test_probes_and_sigterm_drains_every_queued_row(daemon):
    daemon.start()
    assert daemon.get("/healthz") == (200, {"status": "ok"})
    code, body = daemon.get("/readyz")
    assert code == 200 and body["status"] == "ready"
    assert daemon.call("POST", "/v1/tenants", {"id": "a", "engine": "simulator"})[0] == 201
    sync_until(lambda: daemon.states().get("a") == "connected", 10)
    code, body = daemon.call(
        "POST",
        "/v1/tenants/a/simulate",
        {"action": "message", "chat": "15551234567", "text": "x", "count": 20000},
    )
    assert code == 202, body
    # SIGTERM right away: whatever is queued must reach the disk. No wall-clock bound here (it
    # failed at 6.6 s on two loaded cores): the daemon's own stop_grace_s bounds the drain, and a
    # drain cut short by it would show in the row count below.
    assert daemon.stop(timeout_s=60) == 0
    con = sqlite3.connect(daemon.data_dir / "oxyd.sqlite3")
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 20000
    con.close()


def test_restart_restores_paired_tenants_and_keeps_parked_ones_parked(daemon):
    daemon.start()
    for tid in ("a", "b", "c", "d"):
        assert daemon.call("POST", "/v1/tenants", {"id": tid, "engine": "simulator"})[0] == 201
    sync_until(lambda: set(daemon.states().values()) == {"connected"}, 10)
    daemon.call("POST", "/v1/tenants/b/simulate", {"action": "replace"})
    daemon.call("POST", "/v1/tenants/c/simulate", {"action": "logout"})
    daemon.call("POST", "/v1/tenants/d/stop")
    sync_until(
        lambda: (
            daemon.states()
            == {"a": "connected", "b": "conflict", "c": "logged_out", "d": "stopped"}
        ),
        10,
    )
    daemon.kill()  # SIGKILL: no goodbye
    daemon.start()
    sync_until(lambda: daemon.states().get("a") == "connected", 10, "a back")
    assert daemon.states() == {"a": "connected", "b": "conflict", "c": "logged_out", "d": "stopped"}
    _code, tenant = daemon.get("/v1/tenants/b")
    assert tenant["last_error"]  # the reason survives the restart
    assert daemon.stop() == 0


def test_bad_config_exits_78(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "oxyd", "run"],
        capture_output=True,
        text=True,
        env=oxyd_env(tmp_path / "d", 0, TOKEN, OXYD_HTTP_PORT="99999"),
        timeout=30,
    )
    assert r.returncode == 78
    assert "http.port" in r.stderr
