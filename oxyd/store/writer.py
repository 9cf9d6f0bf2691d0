"""The batched writer: drains its queue into ONE transaction per batch.

Messages go in with INSERT .. ON CONFLICT DO NOTHING on (tenant, chat, sender, wa_id), so a
redelivery is a no-op and a distinct message is never dropped. Rows inserted by this batch are
exactly those with an id above the largest id before it (SQLite's rowid allocation), which is
how chats, counters and webhook events are derived from what was really stored, duplicates
excluded, without a query per message.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from oxyd.clock import Clock
from oxyd.config import MediaConfig
from oxyd.model import PEOPLE_DATA, Contact, HistorySync, Message, Receipt
from oxyd.store import faults, outbox, people_events
from oxyd.store import media as media_rows
from oxyd.store.db import MESSAGE_COLS, OUTBOX_INSERT, Store, message_json

_INSERT_MESSAGE = (
    "INSERT INTO messages (tenant, chat, sender, wa_id, from_me, sent_at_ms, kind, text,"
    " push_name, chat_alt, sender_alt, ref_id, media, raw, status, from_history, stored_at_ms)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)
_STATUS_RANK = (
    "CASE status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3"
    " WHEN 'played' THEN 4 ELSE 0 END"
)
_RANK = {"delivered": 2, "read": 3, "played": 4}
# Variables per `IN (...)` list built from input: far below SQLite's limit (32,766 since 3.32,
# 999 before), so no list an engine reports can make a statement that is refused every time.
IN_CHUNK = 500
_MEDIA_DEFAULTS = MediaConfig()  # frozen: safe to share
_RECEIPT_COL = {"delivered": "delivered_at_ms", "read": "read_at_ms", "played": "played_at_ms"}


@dataclass(slots=True)
class Item:
    tenant: str
    payload: Message | Receipt | HistorySync | tuple  # tuple: ("contact", jid, name) etc.
    sent: bool = False  # a message we sent through the API: "message.sent", not "received"
    enqueued_at: float = 0.0
    seq: int = 0


@dataclass
class WriterStats:
    batches: int = 0
    rows: int = 0
    stored: int = 0
    duplicates: int = 0
    failures: int = 0
    rejected: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    latencies_s: list[float] | None = None
    stored_by_tenant: Counter = field(default_factory=Counter)


def _message_row(
    tenant: str, m: Message, now_ms: int, media_cfg: MediaConfig = _MEDIA_DEFAULTS
) -> tuple:
    media = media_rows.initial_json(media_cfg, tenant, m) if m.media else None
    status = "sent" if m.from_me else "received"
    return (
        tenant,
        m.chat,
        m.sender,
        m.wa_id,
        int(m.from_me),
        m.sent_at_ms,
        m.kind,
        m.text,
        m.push_name,
        m.chat_alt,
        m.sender_alt,
        m.ref_id,
        media,
        m.raw,
        status,
        int(m.from_history),
        now_ms,
    )


class Writer:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        subs: outbox.Subscriptions,
        *,
        batch_max: int = 1000,
        queue_max: int = 100_000,
        on_commit: Callable[[dict[str, int]], None] | None = None,
        on_history: Callable[[str, HistorySync, int], None] | None = None,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.subs = subs
        self.batch_max = batch_max
        self.queue_max = queue_max
        # A deque with two events, not asyncio.Queue: put() is on every message's path, and
        # this costs a third of Queue's bookkeeping per item.
        self._items: deque[Item] = deque()
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self.stats = WriterStats()
        self.pending_by_tenant: Counter[str] = Counter()
        self._on_commit = on_commit
        self._on_history = on_history
        self._seq = 0
        self._done_seq = 0
        self._done = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self.kick: Callable[[], None] = lambda: None  # wakes the webhook dispatcher
        self._fault_since_ms: int | None = None  # an OperationalError streak (disk, locks)
        self.media_cfg = MediaConfig()
        # Called after a commit that queued media downloads (wakes the downloader).
        self.on_media: Callable[[], None] = lambda: None
        # How long a stop waits for room and for the queue to reach the disk.
        self.drain_timeout_s = drain_timeout_s

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def failing(self) -> bool:
        return self.stats.failing_since is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oxyd-writer")

    async def put(self, tenant: str, payload: Any, *, sent: bool = False) -> None:
        """Waits while the queue is full: back-pressure, never a drop."""
        await self.wait_room()
        self._seq += 1  # no await from here on: sequence numbers follow queue order
        self._items.append(Item(tenant, payload, sent, self.clock.monotonic(), self._seq))
        self.pending_by_tenant[tenant] += 1
        if not self._has_items.is_set():
            self._has_items.set()

    def offer(self, tenant: str, events: list) -> int:
        """Queue engine events (messages, receipts, history syncs, contacts) without waiting:
        as many as there is room for, in order; returns how many were taken. The per-message
        path of ingest, so it does no await and no per-item coroutine."""
        n = min(len(events), self.queue_max - len(self._items))
        if n <= 0:
            return 0
        now = self.clock.monotonic()
        seq = self._seq
        append = self._items.append
        for ev in events[:n]:
            seq += 1
            if isinstance(ev, Contact):
                ev = ("contact", ev.jid, ev.push_name)
            append(Item(tenant, ev, False, now, seq))
        self._seq = seq
        self.pending_by_tenant[tenant] += n
        if not self._has_items.is_set():
            self._has_items.set()
        return n

    async def wait_room(self) -> None:
        while len(self._items) >= self.queue_max:
            self._has_room.clear()
            await self._has_room.wait()

    async def flush(self) -> None:
        """Returns once everything put before this call is committed."""
        target = self._seq
        async with self._done:
            await self._done.wait_for(lambda: self._done_seq >= target)

    async def stop(self) -> None:
        """Drain the queue to disk, then end the writer task."""
        if self._task is None:
            return
        await self.flush()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._has_items.wait()
            items = self._items
            # Bounded by rows written, not items: a history sync or a receipt for many ids
            # weighs what it writes, so no transaction holds the database for long.
            batch = [items.popleft()]
            weight = _weight(batch[0])
            while items and weight < self.batch_max and len(batch) < self.batch_max:
                weight += _weight(items[0])
                if weight > self.batch_max:
                    break
                batch.append(items.popleft())
            if not items:
                self._has_items.clear()
            if len(items) < self.queue_max:
                self._has_room.set()
            await self._commit_with_retry(batch)
            for it in batch:
                self.pending_by_tenant[it.tenant] -= 1
                if self.pending_by_tenant[it.tenant] <= 0:
                    del self.pending_by_tenant[it.tenant]
            async with self._done:
                self._done_seq = batch[-1].seq
                self._done.notify_all()

    async def _commit_with_retry(self, batch: list[Item]) -> None:
        delay_s = 0.05
        while True:
            try:
                stored = await self._write(batch)
                break
            except Exception as e:
                if faults.transient(e):
                    # Disk full, database locked, I/O error: the machine's fault, not the
                    # batch's. Keep it and retry; readiness reports the failure meanwhile.
                    if self._fault_since_ms is None:
                        self._fault_since_ms = self.clock.now_ms()
                    self._failed(e)
                    logger.error(
                        "store write failed ({}); retrying in {:.2f}s, {} rows held",
                        e,
                        delay_s,
                        len(batch),
                    )
                    await self.clock.sleep(delay_s)
                    delay_s = min(delay_s * 2, 5.0)
                    continue
                # SQLite refuses something in this batch every time (or a bug does): retrying
                # it whole would stop storage for every tenant. Halve until the item is found.
                self.stats.last_error = f"{type(e).__name__}: {e}"
                if len(batch) == 1:
                    self._dead_letter(batch[0], e)
                    stored = {}
                    break
                mid = len(batch) // 2
                await self._commit_with_retry(batch[:mid])
                await self._commit_with_retry(batch[mid:])
                return
        if self.stats.failing_since is not None:
            logger.info("store writes recovered")
        self.stats.failing_since = None
        if self._fault_since_ms is not None:
            await self._storage_alert()
        self.stats.batches += 1
        self.stats.rows += len(batch)
        if self.stats.latencies_s is not None:
            now = self.clock.monotonic()
            self.stats.latencies_s.extend(now - it.enqueued_at for it in batch)
        if stored and self._on_commit is not None:
            self._on_commit(stored)

    async def _storage_alert(self) -> None:
        """Tell the operator's destination that writes failed for a while (disk full, read-only
        database). Sent once writes work again: during the fault the outbox cannot be written
        either; meanwhile /readyz, the health sweep and the metrics show it."""
        since_ms, self._fault_since_ms = self._fault_since_ms, None
        now_ms = self.clock.now_ms()
        data = {
            "reason": f"store writes failed for {(now_ms - since_ms) / 1000:.0f}s"
            f" ({self.stats.last_error}); every accepted row was kept and written",
            "since_ms": since_ms,
            "recovered_at_ms": now_ms,
            "failures": self.stats.failures,
            "action": "check free disk space and the data directory's permissions",
        }
        try:
            await self.store.append_outbox(
                outbox.rows(self.subs, None, "alert.storage", data, now_ms)
            )
            self.kick()
        except Exception as e:
            logger.error("could not queue the storage alert: {}", e)

    def _dead_letter(self, it: Item, e: Exception) -> None:
        """The one item SQLite refuses every time: logged (what it was, never its content)
        and counted (oxyd_writer_dead_lettered); everything around it was committed."""
        self.stats.rejected += 1
        p = it.payload
        if isinstance(p, Message):
            what = f"message {p.wa_id!r} in {p.chat!r}"
        elif isinstance(p, Receipt):
            what = f"{p.type} receipt for {len(p.wa_ids)} ids in {p.chat!r}"
        elif isinstance(p, HistorySync):
            what = f"history sync of {len(p.messages)} messages"
        elif isinstance(p, PEOPLE_DATA):
            what = type(p).__name__
        elif isinstance(p, tuple) and p:
            what = f"{p[0]!r} item"
        else:
            what = f"{type(p).__name__} item"
        logger.bind(tenant=it.tenant).opt(exception=e).error(
            "store refused a {} every time ({}: {}); dead-lettered, the rest of its batch"
            " was stored",
            what,
            type(e).__name__,
            str(e)[:200],
        )

    def _failed(self, e: Exception) -> None:
        self.stats.failures += 1
        self.stats.last_error = f"{type(e).__name__}: {e}"
        if self.stats.failing_since is None:
            self.stats.failing_since = self.clock.monotonic()

    async def _write(self, batch: list[Item]) -> dict[str, int]:
        now_ms = self.clock.now_ms()
        live: dict[tuple, Item] = {}
        rows: list[tuple] = []
        receipts: list[Item] = []
        histories: list[Item] = []
        contacts: dict[tuple[str, str], str] = {}
        names: dict[tuple[str, str], str] = {}
        events: list[tuple] = []
        media_msgs: dict[tuple[str, str, str, str], Message] = {}
        people: list[tuple[str, Any]] = []
        for it in batch:
            p = it.payload
            if isinstance(p, Message):
                rows.append(_message_row(it.tenant, p, now_ms, self.media_cfg))
                live.setdefault((it.tenant, p.chat, p.sender, p.wa_id), it)
                if p.media is not None:
                    media_msgs.setdefault((it.tenant, p.chat, p.sender, p.wa_id), p)
                if p.push_name and not p.from_me:
                    contacts[(it.tenant, p.sender)] = p.push_name
            elif isinstance(p, Receipt):
                receipts.append(it)
            elif isinstance(p, HistorySync):
                histories.append(it)
                for hm in p.messages:
                    if hm.media is not None:
                        media_msgs.setdefault((it.tenant, hm.chat, hm.sender, hm.wa_id), hm)
                for jid, name in p.chat_names:
                    names[(it.tenant, jid)] = name
            elif isinstance(p, PEOPLE_DATA):
                people.append((it.tenant, p))
            elif p[0] == "contact":
                contacts[(it.tenant, p[1])] = p[2]
            elif p[0] == "chat_name":
                names[(it.tenant, p[1])] = p[2]
            elif p[0] == "event":
                events += outbox.rows(self.subs, it.tenant, p[1], p[2], now_ms)
        new_rows, synced, stored_by_tenant, media_pending = await self.store.run_tx(
            lambda conn: self._apply(
                conn,
                now_ms,
                rows,
                live,
                histories,
                contacts,
                names,
                receipts,
                events,
                media_msgs,
                people,
            )
        )
        if events:
            self.kick()
        if media_pending:
            self.on_media()
        self.stats.stored += len(new_rows)
        self.stats.duplicates += (
            len(rows) + sum(len(h.messages) for _, h, _ in synced) - len(new_rows)
        )
        for tenant, h, stored in synced:
            logger.bind(tenant=tenant).info(
                "history sync {}: {} conversations, {} messages processed, {} stored",
                h.sync_type,
                h.conversations,
                len(h.messages),
                stored,
            )
            if self._on_history is not None:
                self._on_history(tenant, h, stored)
        return stored_by_tenant

    def _apply(
        self,
        conn,
        now_ms,
        rows,
        live,
        histories,
        contacts,
        names,
        receipts,
        events,
        media_msgs,
        people,
    ):
        """The whole batch in one call on the database thread: one hop per batch instead of
        one per statement (runs inside Store.run_tx's transaction)."""
        max_before = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        if people:  # learned mappings first: this batch's messages get them too
            people_events.apply(conn, people, self.subs, events, now_ms)
        rows = people_events.fill_alts(conn, rows, live)
        if rows:
            conn.executemany(_INSERT_MESSAGE, rows)
        synced = []
        for it in histories:
            h: HistorySync = it.payload
            history_rows = [_message_row(it.tenant, m, now_ms, self.media_cfg) for m in h.messages]
            cur = conn.executemany(_INSERT_MESSAGE, people_events.fill_alts(conn, history_rows, {}))
            stored = max(cur.rowcount, 0)
            synced.append((it.tenant, h, stored))
            conn.execute(
                "INSERT INTO history_syncs (tenant, sync_type, conversations, processed,"
                " stored, at_ms) VALUES (?,?,?,?,?,?)",
                (it.tenant, h.sync_type, h.conversations, len(h.messages), stored, now_ms),
            )
            summary = {
                "sync_type": h.sync_type,
                "conversations": h.conversations,
                "processed": len(h.messages),
                "stored": stored,
            }
            events += outbox.rows(self.subs, it.tenant, "history.synced", summary, now_ms)
        new_rows = conn.execute(
            "SELECT id, tenant, chat, sender, wa_id, sent_at_ms, from_me, from_history"
            " FROM messages WHERE id > ? ORDER BY id",
            (max_before,),
        ).fetchall()
        stored_by_tenant = self._derive(conn, new_rows, live, events, now_ms)
        media_pending = (
            media_rows.queue_new(conn, self.media_cfg, new_rows, media_msgs, now_ms)
            if media_msgs
            else 0
        )
        if contacts:
            conn.executemany(
                "INSERT INTO contacts (tenant, jid, push_name, updated_at_ms) VALUES"
                " (?,?,?,?) ON CONFLICT DO UPDATE SET push_name=excluded.push_name,"
                " updated_at_ms=excluded.updated_at_ms"
                # Push names rarely change: an unchanged one writes no page.
                " WHERE push_name IS NOT excluded.push_name",
                [(t, j, n, now_ms) for (t, j), n in contacts.items()],
            )
        if names:
            conn.executemany(
                "INSERT INTO chats (tenant, jid, name) VALUES (?,?,?)"
                " ON CONFLICT DO UPDATE SET name=excluded.name",
                [(t, j, n) for (t, j), n in names.items()],
            )
        for it in receipts:
            self._receipt(conn, it.tenant, it.payload, events, now_ms)
        if events:
            conn.executemany(OUTBOX_INSERT, events)
        return new_rows, synced, stored_by_tenant, media_pending

    def _derive(self, db, new_rows, live, events, now_ms) -> dict[str, int]:
        """Chats, per-tenant counters and message webhooks from the rows really inserted."""
        chats: dict[tuple[str, str], list[int]] = {}
        per_tenant: Counter[str] = Counter()
        for _row_id, tenant, chat, sender, wa_id, sent_at_ms, from_me, from_history in new_rows:
            agg = chats.setdefault((tenant, chat), [0, 0, 0])
            agg[0] = max(agg[0], sent_at_ms)
            agg[1] += 1 if not from_me and not from_history else 0
            agg[2] += 1
            per_tenant[tenant] += 1
            it = live.get((tenant, chat, sender, wa_id))
            if it is None or from_history:
                continue
            etype = "message.sent" if it.sent else "message.received"
            if self.subs.wants(tenant, etype):
                data = _message_data(
                    tenant, it.payload, "sent" if from_me else "received", self.media_cfg
                )
                events += outbox.rows(self.subs, tenant, etype, data, now_ms)
        if chats:
            db.executemany(
                "INSERT INTO chats (tenant, jid, last_message_ms, unread_count, message_count)"
                " VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET"
                " last_message_ms=max(coalesce(last_message_ms, 0), excluded.last_message_ms),"
                " unread_count=unread_count+excluded.unread_count,"
                " message_count=message_count+excluded.message_count",
                [(t, c, a[0], a[1], a[2]) for (t, c), a in chats.items()],
            )
        if per_tenant:
            db.executemany(
                "INSERT INTO tenant_counts (tenant, messages_stored) VALUES (?,?)"
                " ON CONFLICT DO UPDATE SET"
                " messages_stored=messages_stored+excluded.messages_stored",
                list(per_tenant.items()),
            )
        return dict(per_tenant)

    def _receipt(self, db, tenant: str, r: Receipt, events: list, now_ms: int) -> None:
        col = _RECEIPT_COL.get(r.type)
        if col is None:
            return
        sets = [f"{col}=coalesce({col}, ?)"]
        args: list[Any] = [r.at_ms]
        if r.type in ("read", "played"):
            sets.append("delivered_at_ms=coalesce(delivered_at_ms, ?)")
            args.append(r.at_ms)
        sql = (
            f"UPDATE messages SET {', '.join(sets)}, status=CASE WHEN {_STATUS_RANK} < ?"
            " THEN ? ELSE status END WHERE tenant=? AND chat=? AND wa_id=?"
        )
        db.executemany(sql, [(*args, _RANK[r.type], r.type, tenant, r.chat, i) for i in r.wa_ids])
        if self.subs.wants(tenant, "message.status"):
            # The ids come from outside: chunked, or a long list would exceed SQLite's limit
            # on variables and be refused every time.
            for i in range(0, len(r.wa_ids), IN_CHUNK):
                chunk = r.wa_ids[i : i + IN_CHUNK]
                cur = db.execute(
                    f"SELECT {MESSAGE_COLS} FROM messages WHERE tenant=? AND chat=?"
                    f" AND wa_id IN ({','.join('?' * len(chunk))})",
                    (tenant, r.chat, *chunk),
                )
                for row in cur.fetchall():
                    events += outbox.rows(
                        self.subs, tenant, "message.status", message_json(row), now_ms
                    )


def _weight(it: Item) -> int:
    """Rows an item writes, roughly: what a batch is bounded by."""
    p = it.payload
    if isinstance(p, HistorySync):
        return 1 + len(p.messages)
    if isinstance(p, Receipt):
        return max(1, len(p.wa_ids))
    return 1


def _message_data(tenant: str, m: Message, status: str, media_cfg: MediaConfig) -> dict[str, Any]:
    return {
        "id": m.wa_id,
        "chat": m.chat,
        "sender": m.sender,
        "from_me": m.from_me,
        "sent_at_ms": m.sent_at_ms,
        "kind": m.kind,
        "text": m.text,
        "push_name": m.push_name,
        "status": status,
        "delivered_at_ms": None,
        "read_at_ms": None,
        "played_at_ms": None,
        "media": media_rows.media_object(tenant, m, *media_rows.policy_status(media_cfg, m))
        if m.media
        else None,
        "chat_alt": m.chat_alt,
        "sender_alt": m.sender_alt,
        "ref_id": m.ref_id,
    }
