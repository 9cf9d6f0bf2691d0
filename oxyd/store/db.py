"""oxyd.sqlite3: open + migrate, tenants, tokens, queries (with schema.py, writer.py, outbox.py).

One write connection guarded by a lock (so a transaction is never interleaved with another
coroutine's statements), and one read connection for the HTTP side: WAL lets readers see
every commit without waiting behind a batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from oxyd.model import State, Tenant
from oxyd.store import schema

DB_NAME = "oxyd.sqlite3"
T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    pass


class SchemaTooNew(StoreError):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Cursors are keyset positions: parts joined by ".", an int in decimal, a str as the hex of its
# UTF-8. Every string of the right shape is a position (the API publishes the exact pattern,
# e.g. CURSOR_INT_INT), so a client can only get a 400 for a cursor of the wrong shape.
CURSOR_INT = r"-?[0-9]{1,18}"
CURSOR_STR = r"([0-9a-f]{2}){0,512}"


def encode_cursor(*parts: int | str) -> str:
    return ".".join(str(p) if isinstance(p, int) else p.encode().hex() for p in parts)


def decode_cursor(cursor: str, kinds: tuple[type, ...]) -> list[Any]:
    """The parts, by `kinds` (int or str); ValueError for anything of another shape."""
    pieces = cursor.split(".")
    if len(pieces) != len(kinds):
        raise ValueError("malformed cursor")
    out: list[Any] = []
    for piece, kind in zip(pieces, kinds, strict=True):
        if kind is int:
            if not re.fullmatch(CURSOR_INT, piece):
                raise ValueError("malformed cursor")
            out.append(int(piece))
        else:
            if not re.fullmatch(CURSOR_STR, piece):
                raise ValueError("malformed cursor")
            out.append(bytes.fromhex(piece).decode("utf-8", "replace"))
    return out


MESSAGES_CURSOR = (int, int)  # (sent_at_ms, row id) of the last message shown
CHATS_CURSOR = (int, str)  # (last_message_ms, jid) of the last chat shown


def cursor_pattern(*kinds: type) -> str:
    return "^" + r"\.".join(CURSOR_INT if k is int else CURSOR_STR for k in kinds) + "$"


async def _pragmas(db: aiosqlite.Connection) -> None:
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    await db.execute("PRAGMA foreign_keys=ON")


MESSAGE_COLS = (
    "id, chat, sender, from_me, sent_at_ms, kind, text, push_name, status, delivered_at_ms,"
    " read_at_ms, played_at_ms, wa_id, media, chat_alt, sender_alt, ref_id"
)


def message_json(row: aiosqlite.Row | tuple) -> dict[str, Any]:
    """The message object of design §6 (plus a few extra fields) from a MESSAGE_COLS row."""
    return {
        "id": row[12],
        "chat": row[1],
        "sender": row[2],
        "from_me": bool(row[3]),
        "sent_at_ms": row[4],
        "kind": row[5],
        "text": row[6],
        "push_name": row[7],
        "status": row[8],
        "delivered_at_ms": row[9],
        "read_at_ms": row[10],
        "played_at_ms": row[11],
        "media": json.loads(row[13]) if row[13] else None,
        "chat_alt": row[14],
        "sender_alt": row[15],
        "ref_id": row[16],
    }


def _tenant(row: aiosqlite.Row | tuple) -> Tenant:
    return Tenant(
        id=row[0],
        engine=row[1],
        state=State(row[2]),
        last_error=row[3],
        state_since_ms=row[4],
        created_at_ms=row[5],
        jid=row[6],
        push_name=row[7],
        failures=row[8],
        ban_expires_ms=row[9],
        messages_stored=row[10] or 0,
        settings=json.loads(row[11]) if row[11] else {},
    )


class Store:
    def __init__(self, path: Path, db: aiosqlite.Connection, ro: aiosqlite.Connection) -> None:
        self.path = path
        self.db = db
        self.ro = ro
        self._lock = asyncio.Lock()
        self.closed = False

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
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

    # ---- tenants ----

    _TENANT_SELECT = (
        "SELECT t.id, t.engine, t.state, t.reason, t.state_since_ms, t.created_at_ms, t.jid,"
        " t.push_name, t.failures, t.ban_expires_ms, c.messages_stored, t.settings"
        " FROM tenants t LEFT JOIN tenant_counts c ON c.tenant = t.id"
    )

    async def tenants(self) -> list[Tenant]:
        async with self.ro.execute(self._TENANT_SELECT + " ORDER BY t.id") as cur:
            return [_tenant(r) for r in await cur.fetchall()]

    async def tenant(self, tenant_id: str) -> Tenant | None:
        async with self.ro.execute(self._TENANT_SELECT + " WHERE t.id = ?", (tenant_id,)) as cur:
            row = await cur.fetchone()
        return _tenant(row) if row else None

    async def messages_stored(self) -> dict[str, int]:
        async with self.ro.execute("SELECT tenant, messages_stored FROM tenant_counts") as cur:
            return {r[0]: r[1] for r in await cur.fetchall()}

    async def add_tenant(self, t: Tenant, *, fresh: bool = False) -> bool:
        """False when the id exists already. `fresh`: a tenant created through the API starts
        empty, even when a deleted tenant of the same id left its messages behind."""
        async with self.tx() as db:
            cur = await db.execute(
                "INSERT INTO tenants (id, engine, state, reason, state_since_ms, created_at_ms,"
                " jid, push_name, failures, settings) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT DO NOTHING",
                (
                    t.id,
                    t.engine,
                    str(t.state),
                    t.last_error,
                    t.state_since_ms,
                    t.created_at_ms,
                    t.jid,
                    t.push_name,
                    t.failures,
                    json.dumps(t.settings) if t.settings else None,
                ),
            )
            if cur.rowcount == 0:
                return False
            if fresh:
                await _forget_leftovers(db, t.id)
            await db.execute(
                "INSERT INTO state_history (tenant, state, reason, at_ms) VALUES (?,?,?,?)",
                (t.id, str(t.state), t.last_error, t.state_since_ms),
            )
            return True

    async def save_state(self, t: Tenant, outbox: Iterable[tuple] = ()) -> None:
        """Persist the tenant's state row, a history line and its outbox rows in one commit."""
        async with self.tx() as db:
            await db.execute(
                "UPDATE tenants SET state=?, reason=?, state_since_ms=?, jid=?, push_name=?,"
                " failures=?, ban_expires_ms=? WHERE id=?",
                (
                    str(t.state),
                    t.last_error,
                    t.state_since_ms,
                    t.jid,
                    t.push_name,
                    t.failures,
                    t.ban_expires_ms,
                    t.id,
                ),
            )
            await db.execute(
                "INSERT INTO state_history (tenant, state, reason, at_ms) VALUES (?,?,?,?)",
                (t.id, str(t.state), t.last_error, t.state_since_ms),
            )
            await insert_outbox(db, outbox)

    async def save_settings(self, tenant_id: str, settings: dict[str, Any]) -> None:
        async with self.tx() as db:
            await db.execute(
                "UPDATE tenants SET settings=? WHERE id=?",
                (json.dumps(settings) if settings else None, tenant_id),
            )

    async def append_outbox(self, rows: Iterable[tuple]) -> None:
        async with self.tx() as db:
            await insert_outbox(db, rows)

    async def state_history(self, tenant_id: str, limit: int = 50) -> list[dict[str, Any]]:
        async with self.ro.execute(
            "SELECT state, reason, at_ms FROM state_history WHERE tenant=? ORDER BY id DESC"
            " LIMIT ?",
            (tenant_id, limit),
        ) as cur:
            return [{"state": r[0], "reason": r[1], "at_ms": r[2]} for r in await cur.fetchall()]

    async def remove_tenant(self, tenant_id: str, *, purge: bool) -> None:
        async with self.tx() as db:
            await db.execute("DELETE FROM tenants WHERE id=?", (tenant_id,))
            await db.execute(
                "DELETE FROM outbox WHERE tenant=? AND destination=?",
                (tenant_id, f"t:{tenant_id}"),
            )
            # Caches of what WhatsApp said for this account: stale for whatever comes next.
            for table in ("lookups", "groups", "pictures"):
                await db.execute(f"DELETE FROM {table} WHERE tenant=?", (tenant_id,))
            if purge:
                for table in (
                    "messages",
                    "chats",
                    "contacts",
                    "tenant_counts",
                    "history_syncs",
                    "media",
                    "lid_map",
                    "outgoing",
                    "idempotency_keys",
                ):
                    await db.execute(f"DELETE FROM {table} WHERE tenant=?", (tenant_id,))

    # ---- tokens ----

    async def add_token(self, tenant_id: str, token: str, now_ms: int) -> None:
        async with self.tx() as db:
            await db.execute(
                "INSERT INTO tokens (hash, tenant, created_at_ms) VALUES (?,?,?)",
                (hash_token(token), tenant_id, now_ms),
            )

    async def revoke_tokens(self, tenant_id: str) -> int:
        async with self.tx() as db:
            cur = await db.execute("DELETE FROM tokens WHERE tenant=?", (tenant_id,))
            return cur.rowcount

    async def token_tenant(self, token: str) -> str | None:
        async with self.ro.execute(
            "SELECT tenant FROM tokens WHERE hash=?", (hash_token(token),)
        ) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    # ---- webhook destinations ----

    async def set_webhook(
        self,
        tenant_id: str,
        url: str,
        secret: str,
        events: list[str] | None,
        now_ms: int,
        *,
        guarded: bool = False,
    ) -> None:
        """`guarded`: set with a tenant token, so delivery checks the address (SSRF)."""
        async with self.tx() as db:
            await db.execute(
                "INSERT INTO webhooks (tenant, url, secret, events, updated_at_ms, guarded)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(tenant) DO UPDATE SET url=excluded.url,"
                " secret=excluded.secret, events=excluded.events,"
                " updated_at_ms=excluded.updated_at_ms, guarded=excluded.guarded",
                (
                    tenant_id,
                    url,
                    secret,
                    json.dumps(events) if events is not None else None,
                    now_ms,
                    int(guarded),
                ),
            )

    async def delete_webhook(self, tenant_id: str) -> bool:
        async with self.tx() as db:
            cur = await db.execute("DELETE FROM webhooks WHERE tenant=?", (tenant_id,))
            return cur.rowcount > 0

    async def webhooks(self) -> dict[str, dict[str, Any]]:
        async with self.ro.execute(
            "SELECT tenant, url, secret, events, updated_at_ms FROM webhooks"
        ) as cur:
            return {
                r[0]: {
                    "url": r[1],
                    "secret": r[2],
                    "events": json.loads(r[3]) if r[3] else None,
                    "updated_at_ms": r[4],
                }
                for r in await cur.fetchall()
            }

    # ---- messages and chats ----

    async def messages(
        self, tenant_id: str, chat: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, keyset-paged on (sent_at_ms, id): no gaps or repeats when many
        messages share a millisecond, and stable while new messages arrive."""
        where, args = ["tenant = ?"], [tenant_id]
        if chat is not None:
            where.append("chat = ?")
            args.append(chat)
        if cursor is not None:
            at_ms, row_id = decode_cursor(cursor, MESSAGES_CURSOR)
            where.append("(sent_at_ms < ? OR (sent_at_ms = ? AND id < ?))")
            args += [at_ms, at_ms, row_id]
        sql = (
            f"SELECT {MESSAGE_COLS} FROM messages WHERE {' AND '.join(where)}"
            " ORDER BY sent_at_ms DESC, id DESC LIMIT ?"
        )
        async with self.ro.execute(sql, (*args, limit + 1)) as cur:
            rows = list(await cur.fetchall())
        nxt = encode_cursor(rows[limit - 1][4], rows[limit - 1][0]) if len(rows) > limit else None
        return [message_json(r) for r in rows[:limit]], nxt

    async def message_by_wa_id(self, tenant_id: str, wa_id: str) -> dict[str, Any] | None:
        async with self.ro.execute(
            f"SELECT {MESSAGE_COLS} FROM messages WHERE tenant=? AND wa_id=? LIMIT 1",
            (tenant_id, wa_id),
        ) as cur:
            row = await cur.fetchone()
        return message_json(row) if row else None

    async def chats(
        self, tenant_id: str, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Most recent first, keyset-paged on (last_message_ms, jid)."""
        where, args = ["tenant = ?"], [tenant_id]
        if cursor is not None:
            at_ms, jid = decode_cursor(cursor, CHATS_CURSOR)
            where.append(
                "(coalesce(last_message_ms, 0) < ? OR"
                " (coalesce(last_message_ms, 0) = ? AND jid < ?))"
            )
            args += [at_ms, at_ms, jid]
        sql = (
            "SELECT jid, name, last_message_ms, unread_count, message_count FROM chats"
            f" WHERE {' AND '.join(where)}"
            " ORDER BY coalesce(last_message_ms, 0) DESC, jid DESC LIMIT ?"
        )
        async with self.ro.execute(sql, (*args, limit + 1)) as cur:
            rows = list(await cur.fetchall())
        out = [
            {
                "jid": r[0],
                "name": r[1],
                "last_message_ms": r[2],
                "unread_count": r[3],
                "message_count": r[4],
            }
            for r in rows[:limit]
        ]
        nxt = None
        if len(rows) > limit:
            last = rows[limit - 1]
            nxt = encode_cursor(last[2] or 0, last[0])
        return out, nxt

    async def count_messages(self, tenant_id: str | None = None) -> int:
        sql, args = "SELECT count(*) FROM messages", ()
        if tenant_id is not None:
            sql, args = sql + " WHERE tenant=?", (tenant_id,)
        async with self.ro.execute(sql, args) as cur:
            return (await cur.fetchone())[0]

    async def history_syncs(self, tenant_id: str) -> list[dict[str, Any]]:
        async with self.ro.execute(
            "SELECT sync_type, conversations, processed, stored, at_ms FROM history_syncs"
            " WHERE tenant=? ORDER BY id DESC LIMIT 20",
            (tenant_id,),
        ) as cur:
            return [
                {
                    "sync_type": r[0],
                    "conversations": r[1],
                    "processed": r[2],
                    "stored": r[3],
                    "at_ms": r[4],
                }
                for r in await cur.fetchall()
            ]

    # ---- retention ----

    async def prune_messages(self, before_ms: int, batch: int = 5000) -> int:
        return await self.delete_in_batches(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
            " WHERE sent_at_ms < ? LIMIT ?)",
            (before_ms,),
            batch,
        )

    async def prune_bookkeeping(self, before_ms: int, batch: int = 5000) -> int:
        """state_history and history_syncs rows older than `before_ms` (retention.history_days).
        Oldest first by id, so each batch stops at the first recent row instead of scanning."""
        total = 0
        for table in ("state_history", "history_syncs"):
            total += await self.delete_in_batches(
                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                " WHERE at_ms < ? ORDER BY id LIMIT ?)",
                (before_ms,),
                batch,
            )
        return total

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


# Tenant rows a re-created id must not inherit: every table with a `tenant` column but the
# outbox, whose rows for the global destination are the operator's (and pending ones must go
# out); full-text tables follow their source table through its triggers.
_LEFTOVER_TABLES_SQL = (
    "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) c"
    " WHERE m.type='table' AND c.name='tenant' AND m.name NOT LIKE 'sqlite_%'"
    " AND m.name <> 'outbox' AND upper(m.sql) NOT LIKE 'CREATE VIRTUAL%'"
)


async def _forget_leftovers(db: aiosqlite.Connection, tenant_id: str) -> None:
    """Delete what a removed tenant of this id left behind (DELETE without ?purge=true)."""
    async with db.execute(_LEFTOVER_TABLES_SQL) as cur:
        tables = [r[0] for r in await cur.fetchall()]
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        await db.execute(f"DELETE FROM {quoted} WHERE tenant=?", (tenant_id,))


OUTBOX_INSERT = (
    "INSERT INTO outbox (event_id, destination, tenant, type, body, created_at_ms,"
    " next_attempt_ms) VALUES (?,?,?,?,?,?,?6) ON CONFLICT DO NOTHING"
)


async def insert_outbox(db: aiosqlite.Connection, rows: Iterable[tuple]) -> None:
    """rows: (event_id, destination, tenant, type, body, created_at_ms)."""
    rows = list(rows)
    if rows:
        await db.executemany(OUTBOX_INSERT, rows)


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
