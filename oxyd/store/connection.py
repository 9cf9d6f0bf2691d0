"""oxyd.sqlite3's two connections: open + migrate, write transactions, the read side.

One write connection guarded by a lock (so a transaction is never interleaved with another
coroutine's statements), and one read connection for the HTTP side: WAL lets readers see
every commit without waiting behind a batch.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self, TypeVar

import aiosqlite

from oxyd.store import schema

DB_NAME = "oxyd.sqlite3"
T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    pass


class SchemaTooNew(StoreError):
    pass


class Connections:
    """The write connection (behind a lock) and the read connection; Store adds its queries
    (tenant_queries.py, message_queries.py) to this."""

    def __init__(self, path: Path, db: aiosqlite.Connection, ro: aiosqlite.Connection) -> None:
        self.path = path
        self.db = db
        self.ro = ro
        self._lock = asyncio.Lock()
        self.closed = False

    @classmethod
    async def open(cls, data_dir: Path) -> Self:
        path = data_dir / DB_NAME
        new = not path.exists()
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            if new:
                await asyncio.to_thread(os.chmod, path, 0o600)
            await _pragmas(db)
            await _migrate(db, path)
            ro = await aiosqlite.connect(path, isolation_level=None)
            await _pragmas(ro)
        except BaseException:
            await db.close()
            raise
        return cls(path, db, ro)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        async with self._lock:
            await self.ro.close()
            try:
                await self.db.execute("PRAGMA optimize")
            finally:
                await self.db.close()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; the lock keeps other writers' statements out of it."""
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
            except BaseException:
                # Also when cancelled while BEGIN was still queued: the database thread runs
                # calls in order, so this ROLLBACK lands after it and nothing stays open.
                await asyncio.shield(self._rollback())
                raise
            await asyncio.shield(self.db.execute("COMMIT"))

    async def run_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one write transaction, in a single call on the database
        thread (the batched writer: one thread hop per batch instead of one per statement).
        Uses aiosqlite's Connection._execute, which has queued calls onto its thread since
        0.11; the version range in pyproject.toml pins it, and test_writer covers it."""
        async with self._lock:
            return await self.db._execute(_in_tx, self.db._conn, fn)

    async def _rollback(self) -> None:
        try:
            await self.db.execute("ROLLBACK")
        except Exception:
            pass  # no transaction was open

    async def ping(self) -> bool:
        try:
            async with self.ro.execute("SELECT 1") as cur:
                return (await cur.fetchone()) == (1,)
        except Exception:
            return False

    async def delete_in_batches(self, sql: str, args: tuple, batch: int = 5000) -> int:
        """Run a `... LIMIT ?` delete until it deletes fewer than `batch` rows, each in its own
        small transaction so the writer is never held up for long."""
        total = 0
        while True:
            async with self.tx() as db:
                n = (await db.execute(sql, (*args, batch))).rowcount
            total += n
            if n < batch:
                return total

    async def optimize(self) -> None:
        async with self._lock:
            await self.db.execute("PRAGMA optimize")


async def _pragmas(db: aiosqlite.Connection) -> None:
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    await db.execute("PRAGMA foreign_keys=ON")


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    async with db.execute("PRAGMA user_version") as cur:
        version = (await cur.fetchone())[0]
    if version > schema.LATEST:
        raise SchemaTooNew(
            f"{path} has schema version {version}, but this oxyd knows only up to"
            f" {schema.LATEST}: upgrade oxyd, or restore a backup made by this version"
        )
    if version == schema.LATEST:
        return
    await db.execute("BEGIN IMMEDIATE")
    try:
        for v in range(version, schema.LATEST):
            for stmt in _statements(schema.MIGRATIONS[v]):
                await db.execute(stmt)
        await db.execute(f"PRAGMA user_version={schema.LATEST}")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


def _in_tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _statements(script: str) -> list[str]:
    # executescript would COMMIT on its own; splitting keeps all migrations in one transaction.
    return [s.strip() for s in script.split(";") if s.strip() and not _only_comments(s)]


def _only_comments(s: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in s.splitlines())
