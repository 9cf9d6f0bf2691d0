"""The CLI against a real `oxyd run` process with simulator tenants."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import DAEMON_TOKEN

TOKEN = DAEMON_TOKEN  # the `daemon` fixture's admin token (tests/conftest.py)

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, deadline_s: float = 20.0, step_s: float = 0.05):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = cond()
        if out:
            return out
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {deadline_s}s")


def cli(daemon, *argv: str, token: str | None = None, url: str | None = None):
    env = {k: v for k, v in daemon["env"].items() if k != "OXYD_ADMIN_TOKEN"}
    env["OXYD_URL"] = url or daemon["url"]
    if token is not None:
        env["OXYD_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "oxyd", *argv], env=env, capture_output=True, text=True, timeout=60
    )


def test_add_list_send_remove(daemon):
    # The token is found in <data_dir>/admin.token? No: OXYD_ADMIN_TOKEN was given to the
    # daemon, so the CLI gets it through OXYD_TOKEN here.
    r = cli(daemon, "tenant", "add", "shop", "--engine", "simulator", token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert "added shop" in r.stdout
    r = cli(daemon, "tenant", "add", "shop", "--engine", "simulator", token=TOKEN)
    assert r.returncode == 6 and "exists" in r.stderr and r.stderr.count("\n") == 1

    def connected():
        r = cli(daemon, "tenant", "show", "shop", "--json", token=TOKEN)
        return r.returncode == 0 and json.loads(r.stdout)["state"] == "connected"

    _wait(connected)
    r = cli(daemon, "tenant", "list", "--json", token=TOKEN)
    assert [t["id"] for t in json.loads(r.stdout)] == ["shop"]
    r = cli(daemon, "tenant", "list", token=TOKEN)
    assert "shop" in r.stdout and "connected" in r.stdout
    r = cli(daemon, "send", "shop", "+15551234567", "hello there", "--json", token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"]
    r = cli(daemon, "token", "shop", token=TOKEN)
    tenant_token = r.stdout.strip()
    assert r.returncode == 0 and tenant_token.startswith("oxt_")
    r = cli(daemon, "tenant", "list", "--json", token=tenant_token)
    assert [t["id"] for t in json.loads(r.stdout)] == ["shop"]
    r = cli(daemon, "tenant", "remove", "shop", token=tenant_token)
    assert r.returncode == 4  # admin-only: 403
    r = cli(daemon, "tenant", "stop", "shop", token=TOKEN)
    assert r.returncode == 0 and "stopped" in r.stdout
    r = cli(daemon, "send", "shop", "15551234567", "x", token=TOKEN)
    assert r.returncode == 0 and r.stdout.startswith("queued ")  # queued while stopped
    r = cli(daemon, "send", "shop", "15551234567", "--location", "x", token=TOKEN)
    assert r.returncode == 2 and "LAT,LNG" in r.stderr
    r = cli(daemon, "tenant", "remove", "shop", "--purge", token=TOKEN)
    assert r.returncode == 0, r.stderr
    r = cli(daemon, "tenant", "show", "shop", token=TOKEN)
    assert r.returncode == 3 and "no tenant" in r.stderr


def test_pair_simulator_tenant(daemon):
    assert cli(daemon, "tenant", "add", "p", "--engine", "simulator", token=TOKEN).returncode == 0
    _wait(lambda: "connected" in cli(daemon, "tenant", "show", "p", token=TOKEN).stdout)
    r = cli(daemon, "pair", "p", token=TOKEN)
    assert r.returncode == 6 and "already_paired" in r.stderr
    assert cli(daemon, "tenant", "stop", "p", token=TOKEN).returncode == 0
    import urllib.request as u

    req = u.Request(
        daemon["url"] + "/v1/tenants/p/logout",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    u.urlopen(req, timeout=5).close()
    r = cli(daemon, "pair", "p", "--timeout", "30", token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert "paired" in r.stdout


def test_errors_and_exit_codes(daemon, tmp_path):
    r = cli(daemon, "tenant", "list", token="wrong")
    assert r.returncode == 4 and "unauthorized" in r.stderr
    r = cli(daemon, "tenant", "list", token=TOKEN, url=f"http://127.0.0.1:{_free_port()}")
    assert r.returncode == 5 and "not reachable" in r.stderr
    r = cli(daemon, "tenant", "show", "nope", token=TOKEN)
    assert r.returncode == 3
    r = cli(daemon, "tenant", "bogus", token=TOKEN)
    assert r.returncode == 2
    # without any token given, the CLI reads <data_dir>/admin.token: absent when the daemon
    # got OXYD_ADMIN_TOKEN, so this is a clear "no token"
    r = cli(daemon, "tenant", "list")
    assert r.returncode == 4 and "token" in r.stderr


def test_token_from_data_dir(tmp_path):
    """A daemon that generated <data_dir>/admin.token: the CLI finds it with no flags."""
    port = _free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXYD_")}
    env |= {"OXYD_DATA_DIR": str(data), "OXYD_HTTP_PORT": str(port), "OXYD_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxyd", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: (data / "admin.token").exists())
        r = None

        def listed():
            nonlocal r
            r = subprocess.run(
                [sys.executable, "-m", "oxyd", "tenant", "list", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return r.returncode == 0

        _wait(listed)
        assert json.loads(r.stdout) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _oxyd(*argv: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oxyd", *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=60,
        **kw,
    )


def test_global_flags_before_or_after_the_subcommand(daemon):
    url = daemon["url"]
    cli(daemon, "tenant", "add", "flags", "--engine", "simulator", token=TOKEN)
    for argv in (
        ["--url", url, "--token", TOKEN, "tenant", "list", "--json"],
        ["tenant", "list", "--json", "--url", url, "--token", TOKEN],
        ["--url=" + url, "tenant", "list", "--token=" + TOKEN, "--json"],
    ):
        r = _oxyd(*argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert [t["id"] for t in json.loads(r.stdout)] == ["flags"]


def test_config_before_or_after_and_every_error_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("http:\n  portt: 1\n  port: x\nlog:\n  format: xml\nwebhoks: {}\n")
    env = {"OXYD_SUPERVISOR_HEARTBEATS": "1", "OXYD_DATA_DIR": str(tmp_path / "d")}
    for argv in (["--config", str(bad), "check-config"], ["check-config", "--config", str(bad)],
                 ["run", "-c", str(bad)]):  # fmt: skip
        r = _oxyd(*argv, env=env)
        assert r.returncode == 78, (argv, r.stderr)
        err = r.stderr.decode()
        for expected in (
            "http.portt: unknown key (did you mean 'port'?)",
            "http.port: must be an integer",
            "log.format: must be 'text' or 'json'",
            "webhoks: unknown key (did you mean 'webhooks'?)",
            "supervisor.heartbeats: unknown key (did you mean 'heartbeat_s'?)",
        ):
            assert expected in err, (argv, err)


def test_check_config_makes_the_checks_run_makes(tmp_path):
    env = {"OXYD_DATA_DIR": str(tmp_path / "d"), "OXYD_HTTP_PORT": str(_free_port())}
    cases = [
        {"OXYD_BACKUP_KEY": "too-short"},
        {"OXYD_BACKUP_KEY_FILE": str(tmp_path / "missing.key")},
        {"OXYD_HTTP_ADMIN_TOKEN_FILE": str(tmp_path / "missing.token")},
        {"OXYD_BACKUP_SCHEDULE": "0 3 * * *"},  # a schedule without a key
    ]
    for case in cases:
        checked = _oxyd("check-config", env={**env, **case})
        ran = _oxyd("run", env={**env, **case})
        assert checked.returncode == ran.returncode == 78, (case, checked.stderr, ran.stderr)
    assert _oxyd("check-config", env=env).returncode == 0


def test_usage_errors_and_a_closed_pipe(daemon):
    r = _oxyd("tenant", "add", "Bad Id", "--url", daemon["url"], "--token", TOKEN)
    assert r.returncode == 2 and b"not a tenant id" in r.stderr
    # `oxyd tenant list | true`: the reader is gone before the answer is printed
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxyd", "tenant", "list", "--url", daemon["url"], "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(60) == 1
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_tenant_show_prints_human_times(daemon):
    cli(daemon, "tenant", "add", "shown", "--engine", "simulator", token=TOKEN)
    out = cli(daemon, "tenant", "show", "shown", token=TOKEN).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("state_since_ms"))
    assert " UTC, " in line and ("ago" in line or "in " in line), line
