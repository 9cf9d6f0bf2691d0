"""Shared test helpers: waiting on conditions, building apps on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from oxyd import app as oxyd_app
from oxyd.clock import FakeClock, settle
from oxyd.config import Config, load
from oxyd.simulator.engine import SimulatorEngine


async def until(
    cond: Callable[[], object], timeout_s: float = 10.0, what: str = "", step_s: float = 0.005
) -> object:
    """Wait for `cond()` (sync or async) to be truthy, polling, with a real-time deadline;
    returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or cond}")
        await asyncio.sleep(step_s)


def sync_until(cond: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or cond}")
        time.sleep(0.01)


def config(tmp_path: Path, **env: str) -> Config:
    base = {"OXYD_DATA_DIR": str(tmp_path / "data")}
    base.update({k if k.startswith("OXYD_") else "OXYD_" + k.upper(): v for k, v in env.items()})
    return load(env=base)


async def make_app(cfg: Config, clock=None, extra_engines=None):
    clock = clock or FakeClock()
    engines = {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
    engines.update(extra_engines or {})
    app = await oxyd_app.build(cfg, clock, engines)
    await oxyd_app.start(app)
    return app


async def advance(clock: FakeClock, total_s: float, step_s: float = 1.0) -> None:
    """Advance the fake clock in steps, letting real I/O (SQLite threads) finish between."""
    done = 0.0
    while done < total_s:
        step = min(step_s, total_s - done)
        await clock.advance(step)
        done += step
        await settle()
        await asyncio.sleep(0.002)


async def advance_until(
    clock: FakeClock,
    cond: Callable[[], object],
    step_s: float = 5.0,
    what: str = "",
    timeout_s: float = 60.0,
) -> float:
    """Advance the fake clock step by step until `cond()` holds (a real-time deadline); returns
    the fake seconds it took. A runner that arms its timer only after a database write can
    fall behind a fixed advance on a busy machine; bound fake durations with the timestamps
    the runner records (`state_since_ms`, `next_attempt_ms`) instead."""
    deadline = time.monotonic() + timeout_s
    start = clock.monotonic()
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s advancing for {what}")
        await advance(clock, step_s, step_s=step_s)
    return clock.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def oxyd_env(
    data_dir: Path, port: int, token: str = "test-admin-token-0123456789", **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXYD_")}
    env.update(
        {
            "OXYD_DATA_DIR": str(data_dir),
            "OXYD_HTTP_PORT": str(port),
            "OXYD_ADMIN_TOKEN": token,
            "OXYD_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


DAEMON_TOKEN = "test-admin-token-0123456789"
# `python -m oxyd` whose engine "neonize" is a second simulator (oxyd.app.make_engines patched)
# and whose sockets reach loopback addresses only: webhook URLs a test draws point anywhere.
_NEONIZE_SIMULATED = """
import errno, ipaddress, runpy, socket, sys
import oxyd.app
from oxyd.simulator.engine import SimulatorEngine

def make_engines(cfg, clock, neonize_tenants=0):
    return {name: SimulatorEngine(cfg.data_dir, cfg.simulator, clock)
            for name in ("simulator", "neonize")}

def loopback(host):
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"

def guard(connect):
    def connect_loopback(sock, address):
        if sock.family != socket.AF_UNIX and not loopback(address[0]):
            raise OSError(errno.ENETUNREACH, "test daemon: loopback only")
        return connect(sock, address)
    return connect_loopback

def getaddrinfo(host, *args, _real=socket.getaddrinfo, **kw):
    if host is not None and not loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, "test daemon: loopback only")
    return _real(host, *args, **kw)

socket.socket.connect = guard(socket.socket.connect)
socket.socket.connect_ex = guard(socket.socket.connect_ex)
socket.getaddrinfo = getaddrinfo
oxyd.app.make_engines = make_engines
sys.argv[0] = "oxyd"
runpy.run_module("oxyd", run_name="__main__")
"""


@contextlib.contextmanager
def oxyd_daemon(
    tmp_path: Path, up_s: float = 30.0, *, simulated_neonize: bool = False
) -> Iterator[dict]:
    """A real `oxyd run` process on a free port with the admin token DAEMON_TOKEN, up (its
    /healthz answers) when this yields {"url", "env", "data", "token"}. Its log is
    tmp_path/daemon.log; it gets SIGTERM at the end (SIGKILL after 30 s).

    `simulated_neonize`: the engine named neonize is a simulator too and the process reaches
    loopback addresses only, for tests that make tenants, webhooks and proxies they do not
    choose (a real neonize tenant would dial WhatsApp, a webhook its URL)."""
    port = free_port()
    env = oxyd_env(tmp_path / "data", port, DAEMON_TOKEN, OXYD_LOG_LEVEL="WARNING")
    argv = [sys.executable, "-m", "oxyd", "run"]
    if simulated_neonize:
        argv[1:3] = ["-c", _NEONIZE_SIMULATED]
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + up_s
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    with urllib.request.urlopen(url + "/healthz", timeout=1):
                        break
                except OSError:
                    assert time.monotonic() < deadline, "daemon did not come up"
                    time.sleep(0.1)
            yield {"url": url, "env": env, "data": tmp_path / "data", "token": DAEMON_TOKEN}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# Hypothesis strategies shared by the fuzz tests (tests/test_http_fuzz.py and
# tests/reliability/test_bad_input.py): any JSON value, and the field names the API knows.
def json_values(max_leaves: int = 12):
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


BODY_FIELDS = [
    "id",
    "engine",
    "webhook",
    "to",
    "text",
    "media",
    "phone",
    "url",
    "secret",
    "events",
    "action",
    "chat",
    "count",
    "ids",
    "type",
    "expire_s",
    "chats",
    "messages",
    "from_me",
]
