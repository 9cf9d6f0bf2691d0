"""`python -m oxyd.cluster.snapshot SRC DST`: a consistent copy of a SQLite file (a tenant's
device store) through SQLite's backup API, in a short-lived process of its own.

Why a process: closing any SQLite handle on a file drops every POSIX lock this process holds
on it, including the Go side's (design §10). The daemon itself therefore never opens a device
store; this child does, and exits.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path


def snapshot(src: Path, dst: Path) -> None:
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            # One self-contained file: no -wal beside it in the archive.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        source.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m oxyd.cluster.snapshot SRC DST", file=sys.stderr)
        return 2
    try:
        snapshot(Path(argv[0]), Path(argv[1]))
    except sqlite3.Error as e:
        print(f"snapshot of {argv[0]} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
