"""schemathesis with every check against the real `oxyd run`: the served OpenAPI document
describes exactly what the daemon accepts and answers.

Seeded and bounded (a few examples per operation, a time budget) so it runs in CI in under two
minutes; `schemathesis run .../v1/openapi.json --checks all` with more examples is the same run,
longer. Left out, each with its reason: /v1/events (a stream that never ends: its events are
tested in test_page.py) and the tenant archive (a tar whose content cannot be generated from a
schema: tested in test_cluster_archive.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TOKEN = "schemathesis-admin-token-0123456789"
EXCLUDED = ("/v1/events", "/v1/tenants/{id}/archive")
BUDGET_S = 75


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "OXYD_DATA_DIR": str(tmp_path / "data"),
        "OXYD_HTTP_PORT": str(port),
        "OXYD_ADMIN_TOKEN": TOKEN,
        "OXYD_LOG_LEVEL": "WARNING",
    }
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxyd", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, "daemon did not come up"
            time.sleep(0.1)
    req = urllib.request.Request(
        url + "/v1/tenants",
        data=json.dumps({"id": "sim1", "engine": "simulator"}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_every_check_passes_against_the_live_daemon(daemon, tmp_path):
    cli = Path(sys.executable).parent / "schemathesis"
    config = Path(__file__).with_name("schemathesis.toml")  # the exceptions, each with its why
    argv = [str(cli), "--config-file", str(config), "run", daemon + "/v1/openapi.json"]
    argv += ["--checks", "all"]
    argv += ["-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "4", "--seed", "1"]
    # ?wait=S on a send may legitimately hold a request for up to 30 s (a tenant a stateful step
    # stopped never sends), so one request may take longer than that before it is an error.
    argv += ["--max-time", str(BUDGET_S), "--request-timeout", "40", "--no-shrink"]
    argv += ["--max-response-time", "35"]
    for path in EXCLUDED:
        argv += ["--exclude-path", path]
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=BUDGET_S + 60, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    # --max-time bounds the run; no wall-clock assertion on two shared cores.
    assert r.returncode == 0, r.stdout[-12000:] + r.stderr[-2000:]
