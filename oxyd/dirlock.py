"""One process per data directory: an exclusive flock on `<data_dir>/.lock`, holding the pid.

Two daemons on one directory would both connect the same WhatsApp sessions (a stream-replaced
ping-pong that can corrupt Signal sessions), and a restore under a running daemon would leave it
writing into deleted files. The kernel drops a flock when its holder dies, however it dies, so
a stale lock file never blocks a restart; the pid inside is only there to name the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"
EXIT_IN_USE = 75  # EX_TEMPFAIL: systemd and scripts may retry once the other process is gone


class DirectoryInUse(Exception):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"data directory {data_dir} is in use by {holder}")
        self.pid = pid


class DirLock:
    """Held until release() or the end of the process."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd: int | None = fd
        self.path = path

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            # Closing drops the flock; the file stays (unlinking it would race a new holder).
            os.close(fd)

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(data_dir: Path) -> DirLock:
    """Take the lock, creating the directory (0700) if needed; raises DirectoryInUse."""
    shown = data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = _read_pid(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DirectoryInUse(shown, pid) from None
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return DirLock(fd, path)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).split()[0])
    return None
