"""A tenant's whatsmeow device store: which device it holds, read in a short-lived child
process, and the client's own handling of the file (DeviceStoreMixin, mixed into NeonizeClient).

A Python sqlite3 open/close of a store inside a process whose Go side holds the same file drops
Go's POSIX locks (SQLite's locks are per process), and then a backup can checkpoint and delete
the live WAL: lost Signal keys, a forced re-pair. So the daemon and the engine hosts never open
a store themselves: the paired state lives in oxyd.sqlite3, and the rare store nobody has a
record of (copied in by hand, an adopted folder) is read here by `python -m
oxyd.neonize.device STORE`, which prints one JSON line and exits:

  {"device": null}                        no file, no whatsmeow schema, or no device row
  {"device": [jid, push_name or null]}    the paired device
  {"error": "device store corrupt: ..."}  the file cannot be read (exit code 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import sqlite3
import sys
from typing import Any

from oxyd.engine import EngineError, StoreUnusable
from oxyd.neonize.jids import parse_jid

CHECK_TIMEOUT_S = 30.0
STORE_NAME = "whatsmeow.sqlite3"
# WAL + busy timeout; the trailing `_x=` swallows the `?_foreign_keys=on` neonize appends.
DSN_OPTIONS = "?_foreign_keys=on&_journal_mode=WAL&_busy_timeout=15000&_x="


def store_dsn(path: pathlib.Path) -> str:
    """The device store's DSN as neonize takes it."""
    return f"{path}{DSN_OPTIONS}"


def read_device(path: pathlib.Path) -> tuple[str, str | None] | None:
    """(jid, push name) of the paired device in a store file. Only ever called in a process
    that runs no Go client on it: the check child, or tests."""
    if not path.is_file():
        return None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            row = con.execute("SELECT jid, push_name FROM whatsmeow_device LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None  # created, never paired: whatsmeow's schema is not there yet
        raise EngineError(f"device store unreadable: {e}") from e
    except sqlite3.Error as e:
        # "file is not a database": a corrupt store is not an unpaired one; saying "pair it"
        # would hide the damage (and pairing would overwrite what is left).
        raise EngineError(f"device store corrupt: {e}") from e
    if not row or not row[0]:
        return None
    return parse_jid(row[0]) or row[0], row[1] or None


async def check_store(path: pathlib.Path) -> tuple[str, str | None] | None:
    """read_device in a child process. Raises EngineError when the store cannot be read."""
    if not await asyncio.to_thread(path.is_file):
        return None  # no need for a child to see that
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oxyd.neonize.device",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT_S)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise EngineError(
            f"device store check failed (exit code {proc.returncode}): {tail[0][:300]}"
        ) from None
    if "error" in answer:
        raise EngineError(str(answer["error"]))
    found = answer.get("device")
    return (str(found[0]), found[1]) if found else None


class DeviceStoreMixin:
    """Mixed into NeonizeClient: the tenant's device store file (`store_dir`, `store_path`),
    without ever opening it through SQLite in this process."""

    engine: Any  # NeonizeEngine: its store_checks bound the children running at once
    store_dir: pathlib.Path
    store_path: pathlib.Path
    _own_jid: str | None

    async def device(self) -> tuple[str, str | None] | None:
        """(jid, push name) of the paired device, read from the store file by a short-lived
        child (never here: Go in this process may hold the file; see oxyd/neonize/device.py).
        The supervisor asks only for stores it has no record of."""
        async with self.engine.store_checks:  # 1,000 adopted folders: not 1,000 children at once
            found = await check_store(self.store_path)
        if found is not None:
            self._own_jid = self._own_jid or found[0]
        return found

    async def is_paired(self) -> bool:
        return await self.device() is not None

    def _check_header(self) -> None:
        """A store that is not SQLite at all (damaged, overwritten) or cannot be read parks its
        tenant instead of failing every connect. Only before this process's first connect of
        the tenant: Go has not opened the file yet, so this open/close cannot drop its locks
        (a POSIX close drops every lock the process holds on the file)."""
        try:
            with open(self.store_path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise StoreUnusable(f"device store cannot be read: {e.strerror}") from e
        if head and head != b"SQLite format 3\x00":
            raise StoreUnusable("device store corrupt: not a SQLite database")

    def _delete_store(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                (self.store_dir / f"{STORE_NAME}{suffix}").unlink()
        with contextlib.suppress(OSError):
            self.store_dir.rmdir()  # only when empty
        self._own_jid = None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m oxyd.neonize.device STORE\n")
        return 2
    try:
        found = read_device(pathlib.Path(argv[0]))
    except EngineError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    print(json.dumps({"device": list(found) if found else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
