"""`oxyd tenant export ID FILE` and `oxyd tenant import FILE [--id ID]` against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import DAEMON_TOKEN

pytestmark = pytest.mark.e2e


def cli(daemon, *argv: str) -> subprocess.CompletedProcess:
    env = {**daemon["env"], "OXYD_URL": daemon["url"], "OXYD_TOKEN": DAEMON_TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "oxyd", *argv], env=env, capture_output=True, text=True, timeout=60
    )


def show(daemon, tid: str) -> dict | None:
    r = cli(daemon, "tenant", "show", tid, "--json")
    return json.loads(r.stdout) if r.returncode == 0 else None


def wait_for(cond, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (out := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return out


def test_export_then_import_brings_a_tenant_back_with_its_messages(daemon, tmp_path):
    assert cli(daemon, "tenant", "add", "shop", "--engine", "simulator").returncode == 0
    wait_for(lambda: (show(daemon, "shop") or {}).get("state") == "connected", "connected")
    req = urllib.request.Request(
        daemon["url"] + "/v1/tenants/shop/simulate",
        data=json.dumps(
            {"action": "message", "chat": "15551234567", "text": "m", "count": 5}
        ).encode(),
        headers={"Authorization": f"Bearer {DAEMON_TOKEN}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    wait_for(lambda: (show(daemon, "shop") or {}).get("messages_stored") == 5, "5 stored")

    archive = tmp_path / "shop.tar"
    r = cli(daemon, "tenant", "export", "shop", str(archive), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tenant"] == "shop" and out["bytes"] == archive.stat().st_size > 0
    assert not (tmp_path / ".shop.tar.part").exists()

    assert cli(daemon, "tenant", "remove", "shop", "--purge").returncode == 0
    r = cli(daemon, "tenant", "import", str(archive))  # the id comes from the archive
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("imported shop (simulator)")
    wait_for(lambda: (show(daemon, "shop") or {}).get("messages_stored") == 5, "5 back")

    r = cli(daemon, "tenant", "import", str(archive), "--id", "shop")
    assert r.returncode == 6, (r.returncode, r.stderr)  # it exists: a conflict


def test_export_and_import_errors_have_their_exit_codes(daemon, tmp_path):
    r = cli(daemon, "tenant", "export", "nobody", str(tmp_path / "x.tar"))
    assert r.returncode == 3 and r.stderr.startswith("oxyd: ")  # not found
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / ".x.tar.part").exists()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar")
    r = cli(daemon, "tenant", "import", str(bad))
    assert r.returncode == 1 and "not a tenant archive" in r.stderr
    env_url = {**daemon, "url": "http://127.0.0.1:9"}  # nothing listens on the discard port
    r = cli(env_url, "tenant", "export", "nobody", str(tmp_path / "y.tar"))
    assert r.returncode == 5 and "not reachable" in r.stderr
