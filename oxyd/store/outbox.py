"""Webhook events as outbox rows: who is subscribed to what, and the event body.

The rows are written in the same transaction as the data they describe (see writer.py and
Store.save_state), so a crash leaves both or neither; webhooks.py delivers them through the
queries at the end of this module.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from oxyd.config import WEBHOOK_EVENTS

if TYPE_CHECKING:
    # Typing only: the Store imports insert_outbox from here; the graph stays one-way.
    from oxyd.clock import Clock
    from oxyd.store.db import Store

ALERTS = tuple(e for e in WEBHOOK_EVENTS if e.startswith("alert."))
GLOBAL = "global"


def tenant_destination(tenant_id: str) -> str:
    return f"t:{tenant_id}"


class Subscriptions:
    """In-memory copy of which destination wants which event type, kept current by the
    routes that change webhooks, so the writer's hot path does no lookups."""

    def __init__(self, global_events: tuple[str, ...] | None = None) -> None:
        # None: no global destination. An empty tuple in the config means "alerts only":
        # the operator's destination is for trouble, not for every message of every tenant.
        self._global = None if global_events is None else frozenset(global_events or ALERTS)
        self._tenants: dict[str, frozenset[str]] = {}

    def set_tenant(self, tenant_id: str, events: list[str] | tuple[str, ...] | None) -> None:
        self._tenants[tenant_id] = frozenset(events or WEBHOOK_EVENTS)

    def remove_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)

    def destinations(self, tenant_id: str | None, event_type: str) -> list[str]:
        out = []
        if tenant_id is not None:
            wanted = self._tenants.get(tenant_id)
            if wanted is not None and event_type in wanted:
                out.append(tenant_destination(tenant_id))
        if self._global is not None and event_type in self._global:
            out.append(GLOBAL)
        return out

    def wants(self, tenant_id: str | None, event_type: str) -> bool:
        return bool(self.destinations(tenant_id, event_type))


def body(event_id: str, event_type: str, tenant_id: str | None, at_ms: int, data: Any) -> str:
    return json.dumps(
        {"id": event_id, "type": event_type, "tenant": tenant_id, "at_ms": at_ms, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def rows(
    subs: Subscriptions, tenant_id: str | None, event_type: str, data: Any, at_ms: int
) -> list[tuple]:
    """Outbox rows (event_id, destination, tenant, type, body, created_at_ms); [] when no
    destination wants this event type."""
    dests = subs.destinations(tenant_id, event_type)
    if not dests:
        return []
    event_id = uuid.uuid4().hex
    text = body(event_id, event_type, tenant_id, at_ms, data)
    return [(event_id, d, tenant_id, event_type, text, at_ms) for d in dests]


# ---- the outbox table: what the dispatcher reads and writes ----
#
# A row is 'pending' until delivered ('delivered', pruned after the retention period) or given
# up on ('dead', kept until replayed or its tenant is removed). Writes go through store.tx()
# so they never interleave with the writer's batch. Reads take a connection: the dispatcher
# passes its own reader (open_reader), because on a connection shared by coroutines an open
# statement of one keeps SQLite's read snapshot alive for all, and a worker could then read
# rows as they were before its own last commit (and send them twice). Each read here is one
# execute_fetchall call, so no statement stays open between calls.

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


def destination_tenant(destination: str) -> str | None:
    """The tenant of a 't:<tenant>' destination; None for the global one."""
    return destination[2:] if destination.startswith("t:") else None


def destination_of(tenant_id: str | None) -> str:
    return GLOBAL if tenant_id is None else tenant_destination(tenant_id)


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    event_id: str
    destination: str
    tenant: str | None
    type: str
    body: str
    created_at_ms: int
    attempts: int
    next_attempt_ms: int


async def open_reader(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA query_only=ON")
    return db


_ROW_COLS = (
    "id, event_id, destination, tenant, type, body, created_at_ms, attempts, next_attempt_ms"
)


async def pending_destinations(ro: aiosqlite.Connection) -> list[str]:
    rows = await ro.execute_fetchall(
        "SELECT DISTINCT destination FROM outbox WHERE status='pending'"
    )
    return [r[0] for r in rows]


async def head(
    ro: aiosqlite.Connection, destination: str, limit: int, after_id: int = 0
) -> list[Row]:
    """The oldest pending rows of one destination, in creation order. Delivery is strictly
    in this order, so only the first row's next_attempt_ms decides when to send."""
    rows = await ro.execute_fetchall(
        f"SELECT {_ROW_COLS} FROM outbox WHERE status='pending' AND destination=?"
        " AND id > ? ORDER BY id LIMIT ?",
        (destination, after_id, limit),
    )
    return [Row(*r) for r in rows]


async def webhook(ro: aiosqlite.Connection, tenant_id: str) -> tuple[str, str, bool] | None:
    """(url, secret, guarded) of a tenant's webhook, read fresh at delivery time."""
    rows = list(
        await ro.execute_fetchall(
            "SELECT url, secret, guarded FROM webhooks WHERE tenant=?", (tenant_id,)
        )
    )
    return (rows[0][0], rows[0][1], bool(rows[0][2])) if rows else None


async def mark_delivered(store: Store, ids: list[int], now_ms: int) -> None:
    if not ids:
        return
    async with store.tx() as db:
        await db.executemany(
            "UPDATE outbox SET status='delivered', attempts=attempts+1, last_error=NULL,"
            " done_at_ms=? WHERE id=? AND status='pending'",
            [(now_ms, i) for i in ids],
        )


class DeliveredMarks:
    """Delivered row ids, committed in the background so the next POST does not wait for a
    commit (the write lock can sit behind the writer's batch or a WAL checkpoint). One
    commit at a time; a failed one leaves its rows pending, to be sent again."""

    def __init__(self, store: Store, clock: Clock, batch_rows: int) -> None:
        self.store = store
        self.clock = clock
        self.batch_rows = batch_rows
        self.ids: list[int] = []
        self.task: asyncio.Task | None = None
        self.last_id = 0

    @property
    def unsettled(self) -> bool:
        return bool(self.ids) or (self.task is not None and not self.task.done())

    def add(self, row_id: int) -> None:
        self.ids.append(row_id)
        self.last_id = row_id
        if len(self.ids) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.ids or (self.task is not None and not self.task.done()):
            return
        if self.task is not None:
            self.task.result()  # a failed commit surfaces here, not silently
        ids, self.ids = self.ids, []
        self.task = asyncio.create_task(mark_delivered(self.store, ids, self.clock.now_ms()))

    async def settle(self) -> None:
        """Every delivered row is marked on disk when this returns."""
        task, self.task = self.task, None
        if task is not None:
            await task
        ids, self.ids = self.ids, []
        await mark_delivered(self.store, ids, self.clock.now_ms())


async def mark_retry(
    store: Store, row_id: int, attempts: int, next_attempt_ms: int, error: str
) -> None:
    async with store.tx() as db:
        await db.execute(
            "UPDATE outbox SET attempts=?, next_attempt_ms=?, last_error=?"
            " WHERE id=? AND status='pending'",
            (attempts, next_attempt_ms, error, row_id),
        )


async def mark_dead(store: Store, row_id: int, attempts: int, error: str, now_ms: int) -> None:
    async with store.tx() as db:
        await db.execute(
            "UPDATE outbox SET status='dead', attempts=?, last_error=?, done_at_ms=?"
            " WHERE id=? AND status='pending'",
            (attempts, error, now_ms, row_id),
        )


async def kill_pending(
    store: Store, destination: str, error: str, now_ms: int, *, created_before_ms: int | None = None
) -> int:
    """Every pending row of a destination (or only those created before a time) -> dead."""
    sql = (
        "UPDATE outbox SET status='dead', last_error=?, done_at_ms=?"
        " WHERE status='pending' AND destination=?"
    )
    args: list[Any] = [error, now_ms, destination]
    if created_before_ms is not None:
        sql += " AND created_at_ms < ?"
        args.append(created_before_ms)
    async with store.tx() as db:
        cur = await db.execute(sql, args)
        return cur.rowcount


async def retry_now(store: Store, destination: str, now_ms: int) -> int:
    """Pending rows of a destination become due now (their attempt counts stay)."""
    async with store.tx() as db:
        cur = await db.execute(
            "UPDATE outbox SET next_attempt_ms=? WHERE status='pending' AND destination=?"
            " AND next_attempt_ms > ?",
            (now_ms, destination, now_ms),
        )
        return cur.rowcount


async def dead(ro: aiosqlite.Connection, destination: str, limit: int) -> list[dict[str, Any]]:
    """Newest first; `event` is the payload exactly as it would be delivered."""
    rows = await ro.execute_fetchall(
        "SELECT event_id, type, created_at_ms, attempts, last_error, done_at_ms, body"
        " FROM outbox WHERE status='dead' AND destination=? ORDER BY id DESC LIMIT ?",
        (destination, limit),
    )
    return [
        {
            "id": r[0],
            "type": r[1],
            "created_at_ms": r[2],
            "attempts": r[3],
            "last_error": r[4],
            "dead_at_ms": r[5],
            "event": json.loads(r[6]),
        }
        for r in rows
    ]


async def replay(store: Store, destination: str, now_ms: int) -> int:
    """Dead -> pending with a fresh attempt budget. Rows keep their id, so replayed events go
    out before newer pending ones, in their original order."""
    async with store.tx() as db:
        cur = await db.execute(
            "UPDATE outbox SET status='pending', attempts=0, next_attempt_ms=?,"
            " last_error=NULL, done_at_ms=NULL WHERE status='dead' AND destination=?",
            (now_ms, destination),
        )
        return cur.rowcount


async def prune(store: Store, before_ms: int, batch: int = 5000) -> int:
    """Delete delivered rows finished before `before_ms`, in small transactions so the
    writer is never held up for long. Pending and dead rows are never pruned."""
    return await store.delete_in_batches(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
        " WHERE status='delivered' AND done_at_ms < ? LIMIT ?)",
        (before_ms,),
        batch,
    )


async def counts(ro: aiosqlite.Connection) -> dict[str, int]:
    out = {PENDING: 0, DELIVERED: 0, DEAD: 0}
    for status, n in await ro.execute_fetchall(
        "SELECT status, count(*) FROM outbox GROUP BY status"
    ):
        out[status] = n
    return out


async def pending_count(ro: aiosqlite.Connection) -> int:
    rows = await ro.execute_fetchall("SELECT count(*) FROM outbox WHERE status='pending'")
    return next(iter(rows))[0]


# ---- writing rows (inside the caller's transaction) ----

OUTBOX_INSERT = (
    "INSERT INTO outbox (event_id, destination, tenant, type, body, created_at_ms,"
    " next_attempt_ms) VALUES (?,?,?,?,?,?,?6) ON CONFLICT DO NOTHING"
)


async def insert_outbox(db: aiosqlite.Connection, rows: Iterable[tuple]) -> None:
    """rows: (event_id, destination, tenant, type, body, created_at_ms)."""
    rows = list(rows)
    if rows:
        await db.executemany(OUTBOX_INSERT, rows)
