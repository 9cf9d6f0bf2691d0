"""The batched writer: a bounded queue with back-pressure, drained into ONE transaction per
batch; transient storage errors are retried, an item SQLite refuses every time is isolated and
dead-lettered. What a batch does in SQL (dedup, chats, counters, webhook events) is
store/batch.py.
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
from oxyd.store import batch as batch_sql
from oxyd.store import faults, outbox
from oxyd.store.db import Store


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
                rows.append(batch_sql.message_row(it.tenant, p, now_ms, self.media_cfg))
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
            lambda conn: batch_sql.apply(
                conn,
                self.subs,
                self.media_cfg,
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


def _weight(it: Item) -> int:
    """Rows an item writes, roughly: what a batch is bounded by."""
    p = it.payload
    if isinstance(p, HistorySync):
        return 1 + len(p.messages)
    if isinstance(p, Receipt):
        return max(1, len(p.wa_ids))
    return 1
