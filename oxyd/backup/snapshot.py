"""Consistent copies of live SQLite databases, taken in a child process.

The device stores are open in neonize's own copy of SQLite inside the daemon, and a second
SQLite library in the same process would silently drop its POSIX locks on close
(sqlite.org/howtocorrupt.html §2.3). The child is `python -m oxyd.backup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
from pathlib import Path

from oxyd.backup.error import BackupError


def snapshot_databases(pairs: list[tuple[str, str]]) -> None:
    """Runs in the child process: a consistent copy of each live database.

    One backup step of all pages holds a single read transaction, so the copy is one snapshot;
    in WAL mode the daemon's writers carry on meanwhile."""
    for src, dst in pairs:
        uri = "file:" + Path(src).absolute().as_posix().replace("?", "%3f") + "?mode=rw"
        source = sqlite3.connect(uri, uri=True, timeout=60)
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            (check,) = target.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"{src} failed its integrity check: {check}")
        finally:
            target.close()
            source.close()


async def snapshot_in_child(pairs: list[tuple[str, str]]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oxyd.backup",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await proc.communicate(json.dumps(pairs).encode())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
        raise BackupError(f"database snapshot failed: {lines[-1]}")
