"""The outgoing queue in oxyd.sqlite3 (design §12): the SQL of sending.

A request is written here before the API answers, with its Idempotency-Key answer in the same
transaction; status changes are written together with their `message.status` outbox rows.
Each write is one call on the database thread (Store.run_tx).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from oxyd.outgoing import Outgoing
from oxyd.store.db import Store
from oxyd.store.outbox import OUTBOX_INSERT

QUEUED, SENT, FAILED, CANCELLED, REVOKED = "queued", "sent", "failed", "cancelled", "revoked"
_COLS = (
    "seq, id, wa_id, chat, kind, body, status, error, attempts, queued_at_ms, sent_at_ms,"
    " done_at_ms, started_at_ms"
)


T = TypeVar("T")


class GroupTx:
    """Many small write transactions as one commit (group commit): requests that arrive while
    a commit is in flight share the next one, each in its own savepoint, so one item's error
    undoes only that item. Under load (50 tenants sending, hundreds of requests a second) this
    turns one commit per queued or sent message into one per round trip to the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self.commits = 0
        self.items = 0

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="oxyd-send-commit")
        # A caller that gives up still has its item committed (or not) with the others.
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []

            try:
                results = await self.store.run_tx(lambda conn, b=batch: _items(conn, b))
            except BaseException as e:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e if isinstance(e, Exception) else RuntimeError(e))
                if not isinstance(e, Exception):
                    raise
                continue
            self.commits += 1
            self.items += len(batch)
            for (_, fut), (ok, value) in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)


def _items(conn: sqlite3.Connection, batch: list) -> list[tuple[bool, Any]]:
    out: list[tuple[bool, Any]] = []
    for fn, _ in batch:
        conn.execute("SAVEPOINT item")
        try:
            out.append((True, fn(conn)))
        except Exception as e:
            conn.execute("ROLLBACK TO item")
            out.append((False, e))
        conn.execute("RELEASE item")
    return out


class QueueFull(Exception):
    pass


class IdempotencyConflict(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Row:
    """One queued (or finished) request, without its media bytes."""

    seq: int
    id: str
    wa_id: str | None
    chat: str
    kind: str
    body: dict[str, Any]
    status: str
    error: str | None
    attempts: int
    queued_at_ms: int
    sent_at_ms: int | None
    done_at_ms: int | None
    # Set while an attempt is in flight on an engine that cannot reuse ids (see mark_started).
    started_at_ms: int | None = None

    def json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "status": self.status,
            "chat": self.chat,
            "kind": self.kind,
            "queued_at_ms": self.queued_at_ms,
            "sent_at_ms": self.sent_at_ms,
            "error": self.error,
            "attempts": self.attempts,
        }
        if self.wa_id and self.wa_id != self.id:
            out["wa_id"] = self.wa_id
        ref = self.body.get("ref")
        if ref:
            out["ref_id"] = ref.get("id")
        return out


def _row(r: tuple) -> Row:
    return Row(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), *r[6:13])


def queued_answer(out: Outgoing, now_ms: int) -> dict[str, Any]:
    answer = {
        "id": out.id,
        "status": QUEUED,
        "chat": out.chat,
        "kind": out.kind,
        "queued_at_ms": now_ms,
    }
    ref = out.body.get("ref")
    if ref:
        answer["ref_id"] = ref["id"]
    return answer


async def enqueue(
    group: GroupTx,
    tenant: str,
    out: Outgoing,
    now_ms: int,
    queue_max: int,
    idempotency: tuple[str, str] | None,
) -> tuple[int, dict[str, Any], bool]:
    """(status, answer, replayed). With an Idempotency-Key (key, request hash) seen before,
    the first answer comes back and nothing is queued; raises IdempotencyConflict when the
    key came with another request, QueueFull past `queue_max` queued for this tenant."""
    answer = queued_answer(out, now_ms)

    def tx(conn: sqlite3.Connection) -> tuple[int, dict[str, Any], bool]:
        if idempotency is not None:
            key, request_hash = idempotency
            seen = conn.execute(
                "SELECT request_hash, status, response FROM idempotency_keys"
                " WHERE tenant=? AND key=?",
                (tenant, key),
            ).fetchone()
            if seen is not None:
                if seen[0] != request_hash:
                    raise IdempotencyConflict(key)
                return seen[1], json.loads(seen[2]), True
        depth = conn.execute(
            "SELECT count(*) FROM outgoing WHERE tenant=? AND status='queued'", (tenant,)
        ).fetchone()[0]
        if depth >= queue_max:
            raise QueueFull(depth)
        conn.execute(
            "INSERT INTO outgoing (tenant, id, chat, kind, body, data, status, queued_at_ms)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (
                tenant,
                out.id,
                out.chat,
                out.kind,
                json.dumps(out.body, separators=(",", ":")),
                out.data,
                QUEUED,
                now_ms,
            ),
        )
        if idempotency is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (tenant, key, request_hash, status, response,"
                " created_at_ms) VALUES (?,?,?,?,?,?)",
                (tenant, idempotency[0], idempotency[1], 202, json.dumps(answer), now_ms),
            )
        return 202, answer, False

    return await group.run(tx)


async def next_queued(store: Store, tenant: str, limit: int) -> list[tuple[Row, bytes | None]]:
    async with store.ro.execute(
        f"SELECT {_COLS}, data FROM outgoing WHERE tenant=? AND status='queued'"
        " ORDER BY seq LIMIT ?",
        (tenant, limit),
    ) as cur:
        return [(_row(r), r[13]) for r in await cur.fetchall()]


async def get(store: Store, tenant: str, msg_id: str) -> Row | None:
    async with store.ro.execute(
        f"SELECT {_COLS} FROM outgoing WHERE tenant=? AND (id=? OR wa_id=?)"
        " ORDER BY id=? DESC LIMIT 1",
        (tenant, msg_id, msg_id, msg_id),
    ) as cur:
        r = await cur.fetchone()
    return _row(r) if r else None


async def tenants_with_queued(store: Store) -> list[str]:
    async with store.ro.execute(
        "SELECT DISTINCT tenant FROM outgoing WHERE status='queued'"
    ) as cur:
        return [r[0] for r in await cur.fetchall()]


async def depths(store: Store) -> dict[str, int]:
    async with store.ro.execute(
        "SELECT tenant, count(*) FROM outgoing WHERE status='queued' GROUP BY tenant"
    ) as cur:
        return {r[0]: r[1] for r in await cur.fetchall()}


async def finish(
    group: GroupTx,
    tenant: str,
    msg_id: str,
    status: str,
    now_ms: int,
    outbox_rows: list[tuple],
    *,
    wa_id: str | None = None,
    sent_at_ms: int | None = None,
    error: str | None = None,
    only_if_queued: bool = False,
    revokes: str | None = None,
) -> bool:
    """Move one message to sent / failed / cancelled (its media bytes are dropped: they are
    not needed any more), with its webhook rows, in one commit. With `revokes`, the message
    a sent revoke refers to becomes `revoked`. False when nothing matched."""

    def tx(conn: sqlite3.Connection) -> bool:
        sql = (
            "UPDATE outgoing SET status=?, wa_id=coalesce(?, wa_id), sent_at_ms=coalesce(?,"
            " sent_at_ms), error=?, data=NULL, done_at_ms=?, started_at_ms=NULL"
            " WHERE tenant=? AND id=?"
        )
        if only_if_queued:
            sql += " AND status='queued'"
        n = conn.execute(sql, (status, wa_id, sent_at_ms, error, now_ms, tenant, msg_id)).rowcount
        if n and revokes:
            conn.execute(
                "UPDATE outgoing SET status='revoked' WHERE tenant=? AND id=?",
                (tenant, revokes),
            )
        if n and outbox_rows:
            conn.executemany(OUTBOX_INSERT, outbox_rows)
        return n > 0

    return await group.run(tx)


async def mark_started(group: GroupTx, tenant: str, msg_id: str, now_ms: int) -> bool:
    """Record, durably, that an attempt is handed to an engine that cannot reuse ids; False
    when the message is no longer queued (cancelled meanwhile)."""

    def tx(conn: sqlite3.Connection) -> bool:
        return (
            conn.execute(
                "UPDATE outgoing SET started_at_ms=? WHERE tenant=? AND id=? AND status='queued'",
                (now_ms, tenant, msg_id),
            ).rowcount
            > 0
        )

    return await group.run(tx)


async def clear_started(group: GroupTx, tenant: str, msg_id: str) -> None:
    """The attempt ended without sending anything (the engine said so): no longer in flight."""

    def tx(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE outgoing SET started_at_ms=NULL WHERE tenant=? AND id=?", (tenant, msg_id)
        )

    await group.run(tx)


async def count_attempt(group: GroupTx, tenant: str, msg_id: str, error: str) -> int:
    """One more failed attempt (nothing in flight any more); returns the count."""

    def tx(conn: sqlite3.Connection) -> int:
        conn.execute(
            "UPDATE outgoing SET attempts=attempts+1, error=?, started_at_ms=NULL"
            " WHERE tenant=? AND id=?",
            (error, tenant, msg_id),
        )
        row = conn.execute(
            "SELECT attempts FROM outgoing WHERE tenant=? AND id=?", (tenant, msg_id)
        ).fetchone()
        return row[0] if row else 0

    return await group.run(tx)


async def expired(store: Store, tenant: str, before_ms: int) -> list[Row]:
    async with store.ro.execute(
        f"SELECT {_COLS} FROM outgoing WHERE tenant=? AND status='queued' AND queued_at_ms<?"
        " ORDER BY seq",
        (tenant, before_ms),
    ) as cur:
        return [_row(r) for r in await cur.fetchall()]


async def prune(store: Store, keys_before_ms: int, done_before_ms: int) -> int:
    """Idempotency answers older than their 24 h, finished requests older than a week."""
    n = await store.delete_in_batches(
        "DELETE FROM idempotency_keys WHERE (tenant, key) IN (SELECT tenant, key FROM"
        " idempotency_keys WHERE created_at_ms < ? LIMIT ?)",
        (keys_before_ms,),
    )
    n += await store.delete_in_batches(
        "DELETE FROM outgoing WHERE seq IN (SELECT seq FROM outgoing WHERE done_at_ms < ? LIMIT ?)",
        (done_before_ms,),
    )
    return n


async def read_targets(
    store: Store, tenant: str, chat: str, up_to: str | None, limit: int = 100
) -> list[tuple[str, str]]:
    """(wa_id, sender) of the newest received messages of a chat (up to `up_to` when given):
    what a read receipt for "the chat up to here" names."""
    where, args = "tenant=? AND chat=? AND from_me=0", [tenant, chat]
    if up_to is not None:
        async with store.ro.execute(
            f"SELECT sent_at_ms, id FROM messages WHERE {where} AND wa_id=?",
            (*args, up_to),
        ) as cur:
            mark = await cur.fetchone()
        if mark is None:
            return []
        where += " AND (sent_at_ms < ? OR (sent_at_ms = ? AND id <= ?))"
        args += [mark[0], mark[0], mark[1]]
    async with store.ro.execute(
        f"SELECT wa_id, sender FROM messages WHERE {where} ORDER BY sent_at_ms DESC, id DESC"
        " LIMIT ?",
        (*args, limit),
    ) as cur:
        return [(r[0], r[1]) for r in await cur.fetchall()]


async def clear_unread(store: Store, tenant: str, chat: str) -> None:
    def tx(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE chats SET unread_count=0 WHERE tenant=? AND jid=?", (tenant, chat))

    await store.run_tx(tx)
