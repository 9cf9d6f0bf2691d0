"""The systemd notify protocol (sd_notify) over $NOTIFY_SOCKET, without a dependency.

Every method is a no-op when the process was not started by systemd with Type=notify, so the
daemon calls them unconditionally. Sends are non-blocking and best effort: a full socket
buffer or a vanished manager must never stall or crash the event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from loguru import logger


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or None
        # A leading '@' names a socket in the abstract namespace (a NUL byte on the wire).
        if addr is not None and addr.startswith("@"):
            addr = "\0" + addr[1:]
        self._addr = addr
        self.watchdog_interval_s = _watchdog_interval_s(env)

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of KEY=VALUE lines; True when it was handed to the kernel."""
        if self._addr is None:
            return False
        try:
            # A socket per message, as libsystemd does: a few a minute, nothing kept open.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(fields).encode(), self._addr)
            return True
        except OSError as e:
            logger.debug("sd_notify {} not sent: {}", fields[0].split("=")[0], e)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_line(status)}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Ping at half the watchdog period. It runs on the event loop on purpose: a loop that
        hangs stops the pings, and systemd restarts the service."""
        interval_s = self.watchdog_interval_s
        if self._addr is None or interval_s is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval_s)


def _line(text: str) -> str:
    # A newline would start a new KEY=VALUE field in the datagram.
    return " ".join(str(text).splitlines())


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    # The watchdog belongs to one process; a child that inherited the variables must not ping.
    if pid and pid.strip() != str(os.getpid()):
        return None
    return usec / 2 / 1_000_000
