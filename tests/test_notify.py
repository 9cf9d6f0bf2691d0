"""sd_notify against a real unix datagram socket, as systemd would listen on it."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oxyd.notify import Notifier


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    # tmp_path can exceed the 108-byte limit of unix socket paths; a short directory cannot.
    with tempfile.TemporaryDirectory(prefix="oxn") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield sock, path
        finally:
            sock.close()


def recv_all(sock: socket.socket, n: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(n)]


def test_messages_arrive_in_order(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("2 tenants, 1 connected")
    assert n.status("2 tenants, 2 connected\nsecond line")
    assert n.watchdog()
    assert n.stopping()
    assert recv_all(sock, 4) == [
        "READY=1\nSTATUS=2 tenants, 1 connected",
        "STATUS=2 tenants, 2 connected second line",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_abstract_socket_name():
    name = f"oxyd-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_noop_without_socket():
    n = Notifier({})
    assert not n.enabled
    assert not n.ready("x")
    assert not n.watchdog()
    assert n.watchdog_interval_s is None


def test_vanished_manager_is_not_an_error(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False


def test_watchdog_interval_and_pid():
    pid = str(os.getpid())
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval_s == 15
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None


async def test_watchdog_loop_pings_from_the_event_loop(listener):
    sock, path = listener
    sock.setblocking(False)
    # 20 ms watchdog period: pings every 10 ms.
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    n.ready()
    task = asyncio.create_task(n.watchdog_loop())
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < 4 and time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n.stopping()
    sock.setblocking(True)
    sock.settimeout(5)
    rest = sock.recv(4096)
    while rest != b"STOPPING=1":
        assert rest == b"WATCHDOG=1"
        rest = sock.recv(4096)
    assert got[0] == b"READY=1"
    assert got[1:] == [b"WATCHDOG=1"] * 3


async def test_watchdog_loop_returns_when_not_requested():
    await asyncio.wait_for(Notifier({"NOTIFY_SOCKET": "/x"}).watchdog_loop(), 1)
