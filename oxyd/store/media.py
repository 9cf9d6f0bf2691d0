"""The `media` table: one row per media message, the download queue and its outcome.

The row is the truth; the message's `media` JSON mirrors status, sha256, size and url so every
reader of messages (list, webhooks, status events) shows the same object without a join. Both
change in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from oxyd.config import MediaConfig
from oxyd.model import Message
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.store.message_queries import MESSAGE_COLS, message_json
from oxyd.store.outbox import OUTBOX_INSERT

PENDING, STORED, FAILED, SKIPPED = "pending", "stored", "failed", "skipped"
# Media.ref of media oxyd sent itself and kept a copy of (never an engine's reference: the
# file is in the store already and cannot be downloaded again).
KEPT_REF = "oxyd:kept"
LOST_REASON = "the stored file is missing from disk (restored without media?); fetching it again"

_COLS = (
    "id, tenant, chat, sender, wa_id, from_me, type, mime, size, expected_sha256, sha256, ref,"
    " status, reason, attempts, reuploaded, next_attempt_ms, sent_at_ms"
)


@dataclass(slots=True)
class Job:
    """One media row as the downloader needs it."""

    id: int
    tenant: str
    chat: str
    sender: str
    wa_id: str
    from_me: bool
    type: str
    mime: str | None
    size: int | None
    expected_sha256: str | None
    sha256: str | None
    ref: str | None
    status: str
    reason: str | None
    attempts: int
    reuploaded: bool
    next_attempt_ms: int
    sent_at_ms: int


@dataclass(slots=True)
class Outcome:
    job: Job
    status: str
    reason: str | None = None
    sha256: str | None = None
    size: int | None = None


def _job(row: tuple) -> Job:
    j = Job(*row)
    j.from_me, j.reuploaded = bool(j.from_me), bool(j.reuploaded)
    return j


def url(tenant: str, sha256: str) -> str:
    return f"/v1/tenants/{tenant}/media/{sha256}"


def policy_status(cfg: MediaConfig, m: Message, *, manual: bool = False) -> tuple[str, str | None]:
    """(status, reason) a media message starts with. A manual retry (POST .../media) overrides
    the switches that say "not automatically", never the size bound."""
    media = m.media
    if media is None:
        return SKIPPED, "no media"
    if media.ref == KEPT_REF:
        return STORED, None  # sent through this API: its bytes were kept when it was sent
    if not media.ref and not m.from_me:
        return SKIPPED, "no download reference: the message carries no media path"
    if media.size_bytes is not None and media.size_bytes > cfg.max_bytes:
        return SKIPPED, f"{media.size_bytes} bytes is over media.max_bytes ({cfg.max_bytes})"
    if manual and media.ref:
        return PENDING, None
    if not cfg.download:
        return SKIPPED, "media.download is off"
    if not cfg.wants(m.kind):
        return SKIPPED, f"type {m.kind} is not in media.types"
    if m.from_history and not cfg.history:
        return SKIPPED, "history-sync media (media.history is off)"
    if not media.ref:
        # Sent through this API, and its copy could not be kept (oxyd/media/kept.py logs why);
        # there is no CDN reference to fetch it back by.
        return SKIPPED, "no copy kept when it was sent (media.quota_mb reached or a disk error)"
    return PENDING, None


def media_object(tenant: str, m: Message, status: str, reason: str | None) -> dict[str, Any]:
    """The message object's `media` (design §11) as known at receipt."""
    md = m.media
    assert md is not None
    # WhatsApp's own file hash is known at receipt; the url only once the file is here.
    sha = md.sha256
    return {
        "type": m.kind,
        "mime": md.mime,
        "size": md.size_bytes,
        "sha256": sha,
        "filename": md.filename,
        "caption": md.caption if md.caption is not None else m.text,
        "duration_s": md.duration_s,
        "status": status,
        "reason": reason,
        "url": url(tenant, sha) if sha and status == STORED else None,
    }


def initial_json(cfg: MediaConfig, tenant: str, m: Message) -> str | None:
    if m.media is None:
        return None
    return json.dumps(media_object(tenant, m, *policy_status(cfg, m)), separators=(",", ":"))


_INSERT = (
    "INSERT INTO media (tenant, chat, sender, wa_id, from_me, type, mime, size, expected_sha256,"
    " ref, status, reason, sent_at_ms, queued_at_ms, sha256, done_at_ms)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
)


def queue_new(
    conn: sqlite3.Connection,
    cfg: MediaConfig,
    new_rows: list[tuple],
    msgs: dict[tuple[str, str, str, str], Message],
    now_ms: int,
) -> int:
    """Inside the writer's transaction: a media row for every media message this batch really
    inserted (duplicates were filtered by the messages table). Returns how many are pending."""
    rows, pending = [], 0
    for _id, tenant, chat, sender, wa_id, *_ in new_rows:
        m = msgs.get((tenant, chat, sender, wa_id))
        if m is None or m.media is None:
            continue
        status, reason = policy_status(cfg, m)
        pending += status == PENDING
        md = m.media
        kept = status == STORED  # a sent file kept at send time: its row is final already
        rows.append(
            (tenant, chat, sender, wa_id, int(m.from_me), m.kind, md.mime, md.size_bytes,
             md.sha256, md.ref, status, reason, m.sent_at_ms, now_ms,
             md.sha256 if kept else None, now_ms if kept else None)
        )  # fmt: skip
    if rows:
        conn.executemany(_INSERT, rows)
    return pending


class MediaTable:
    """Queries and state changes of the media table, on the Store's connections."""

    def __init__(self, store: Store, subs: outbox.Subscriptions) -> None:
        self.store = store
        self.subs = subs

    async def pending_tenants(self) -> list[str]:
        async with self.store.ro.execute(
            "SELECT DISTINCT tenant FROM media WHERE status='pending'"
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def pending(self, tenant: str, after_id: int, limit: int) -> list[Job]:
        async with self.store.ro.execute(
            f"SELECT {_COLS} FROM media WHERE status='pending' AND tenant=? AND id>?"
            " ORDER BY id LIMIT ?",
            (tenant, after_id, limit),
        ) as cur:
            return [_job(r) for r in await cur.fetchall()]

    async def get(self, row_id: int) -> Job | None:
        async with self.store.ro.execute(f"SELECT {_COLS} FROM media WHERE id=?", (row_id,)) as c:
            row = await c.fetchone()
        return _job(row) if row else None

    async def by_wa_id(self, tenant: str, wa_id: str) -> Job | None:
        async with self.store.ro.execute(
            f"SELECT {_COLS} FROM media WHERE tenant=? AND wa_id=? ORDER BY id LIMIT 1",
            (tenant, wa_id),
        ) as cur:
            row = await cur.fetchone()
        return _job(row) if row else None

    async def stored_file(self, tenant: str, sha256: str) -> str | None:
        """The mime of a file this tenant stored under `sha256`, or None when it has none
        (another tenant's file by the same hash is invisible here)."""
        async with self.store.ro.execute(
            "SELECT coalesce(mime, '') FROM media WHERE tenant=? AND sha256=? AND status='stored'"
            " LIMIT 1",
            (tenant, sha256),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def bytes_by_tenant(self, tenant: str | None = None) -> dict[str, int]:
        """Bytes on disk per tenant (or of one tenant): each distinct file once."""
        where, args = ("AND tenant=?", (tenant,)) if tenant is not None else ("", ())
        async with self.store.ro.execute(
            "SELECT tenant, sum(size) FROM (SELECT DISTINCT tenant, sha256, size FROM media"
            f" WHERE status='stored' {where}) GROUP BY tenant",
            args,
        ) as cur:
            return {r[0]: r[1] or 0 for r in await cur.fetchall()}

    async def stored_tenants(self) -> list[str]:
        async with self.store.ro.execute(
            "SELECT DISTINCT tenant FROM media WHERE status='stored'"
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def counts(self) -> dict[str, int]:
        async with self.store.ro.execute("SELECT status, count(*) FROM media GROUP BY status") as c:
            return {r[0]: r[1] for r in await c.fetchall()}

    async def has_stored(self, tenant: str, sha256: str) -> bool:
        return await self.stored_file(tenant, sha256) is not None

    # ---- state changes (each with the message JSON and its webhook in one commit) ----

    async def finish(
        self,
        job: Job,
        status: str,
        now_ms: int,
        *,
        reason: str | None = None,
        sha256: str | None = None,
        size: int | None = None,
    ) -> dict[str, Any] | None:
        """A final outcome: stored, failed (for good) or skipped. Returns the message object
        (for the `message.media` webhook, also queued here)."""
        return (await self.finish_many([Outcome(job, status, reason, sha256, size)], now_ms))[0]

    async def finish_many(
        self, outcomes: list[Outcome], now_ms: int
    ) -> list[dict[str, Any] | None]:
        """Several outcomes in ONE transaction (the downloader's group commit: a write
        transaction per file was most of a small file's cost)."""

        def apply(conn: sqlite3.Connection) -> list[dict[str, Any] | None]:
            return [self._apply_outcome(conn, o, now_ms) for o in outcomes]

        return await self.store.run_tx(apply)

    def _apply_outcome(
        self, conn: sqlite3.Connection, o: Outcome, now_ms: int
    ) -> dict[str, Any] | None:
        job, status, reason, sha256, size = o.job, o.status, o.reason, o.sha256, o.size
        conn.execute(
            "UPDATE media SET status=?, reason=?, sha256=coalesce(?, sha256),"
            " size=coalesce(?, size), done_at_ms=?, attempts=? WHERE id=?",
            (status, reason, sha256, size, now_ms, job.attempts, job.id),
        )
        link = url(job.tenant, sha256) if status == STORED and sha256 else None
        conn.execute(
            "UPDATE messages SET media=json_set(coalesce(media, '{}'), '$.status', ?,"
            " '$.reason', ?, '$.url', ?,"
            " '$.sha256', coalesce(?, json_extract(media, '$.sha256')),"
            " '$.size', coalesce(?, json_extract(media, '$.size')))"
            " WHERE tenant=? AND chat=? AND sender=? AND wa_id=?",
            (status, reason, link, sha256, size, job.tenant, job.chat, job.sender, job.wa_id),
        )
        if status not in (STORED, FAILED) or not self.subs.wants(job.tenant, "message.media"):
            return None
        row = conn.execute(
            f"SELECT {MESSAGE_COLS} FROM messages WHERE tenant=? AND chat=? AND sender=?"
            " AND wa_id=?",
            (job.tenant, job.chat, job.sender, job.wa_id),
        ).fetchone()
        if row is None:
            return None  # the message was pruned meanwhile
        msg = message_json(row)
        rows = outbox.rows(self.subs, job.tenant, "message.media", msg, now_ms)
        if rows:
            conn.executemany(OUTBOX_INSERT, rows)
        return msg

    async def reschedule(
        self, job: Job, *, next_attempt_ms: int, reason: str | None, ref: str | None = None
    ) -> None:
        """Still pending: try again later (attempts and the reupload flag as in `job`)."""

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE media SET attempts=?, reuploaded=?, next_attempt_ms=?, reason=?,"
                " ref=coalesce(?, ref) WHERE id=?",
                (job.attempts, int(job.reuploaded), next_attempt_ms, reason, ref, job.id),
            )

        await self.store.run_tx(apply)

    async def requeue(self, job: Job, now_ms: int) -> dict[str, Any] | None:
        """A manual retry: pending again with a fresh attempt budget."""

        def apply(conn: sqlite3.Connection) -> dict[str, Any] | None:
            conn.execute(
                "UPDATE media SET status='pending', reason=NULL, attempts=0, reuploaded=0,"
                " next_attempt_ms=0, done_at_ms=NULL WHERE id=?",
                (job.id,),
            )
            conn.execute(
                "UPDATE messages SET media=json_set(media, '$.status', 'pending', '$.reason',"
                " NULL) WHERE tenant=? AND chat=? AND sender=? AND wa_id=?",
                (job.tenant, job.chat, job.sender, job.wa_id),
            )
            row = conn.execute(
                f"SELECT {MESSAGE_COLS} FROM messages WHERE tenant=? AND chat=? AND sender=?"
                " AND wa_id=?",
                (job.tenant, job.chat, job.sender, job.wa_id),
            ).fetchone()
            return message_json(row) if row else None

        return await self.store.run_tx(apply)

    async def mark_lost(self, tenant: str, shas: list[str]) -> int:
        """Stored rows of `tenant` whose file (by hash) is gone from disk go back to pending,
        with a fresh attempt budget, to be downloaded again (the CDN copy may still be there;
        if not, the expired path decides). The hash they had becomes the one expected, so the
        new download is verified against it. Returns how many rows changed."""

        def apply(conn: sqlite3.Connection) -> int:
            n = 0
            for sha in shas:
                ids = conn.execute(
                    "SELECT id, chat, sender, wa_id FROM media WHERE tenant=? AND sha256=?"
                    " AND status='stored'",
                    (tenant, sha),
                ).fetchall()
                conn.executemany(
                    "UPDATE media SET status='pending', reason=?, attempts=0, reuploaded=0,"
                    " next_attempt_ms=0, done_at_ms=NULL,"
                    " expected_sha256=coalesce(expected_sha256, sha256) WHERE id=?",
                    [(LOST_REASON, i[0]) for i in ids],
                )
                conn.executemany(
                    "UPDATE messages SET media=json_set(media, '$.status', 'pending',"
                    " '$.reason', ?, '$.url', NULL) WHERE tenant=? AND chat=? AND sender=?"
                    " AND wa_id=?",
                    [(LOST_REASON, tenant, *i[1:]) for i in ids],
                )
                n += len(ids)
            return n

        return await self.store.run_tx(apply)

    # ---- the quota alert, sent once per tenant and quota (oxyd/media/quota.py) ----

    async def quota_alerts(self) -> dict[str, tuple[int, int]]:
        """tenant -> (quota_bytes, used_bytes) when its alert was sent."""
        async with self.store.ro.execute(
            "SELECT tenant, quota_bytes, used_bytes FROM media_quota_alerts"
        ) as cur:
            return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}

    async def record_quota_alert(
        self, tenant: str, quota_bytes: int, used_bytes: int, now_ms: int, rows: list[tuple]
    ) -> None:
        """The alert's webhook rows and the fact that it was sent, in one commit."""

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO media_quota_alerts"
                " (tenant, quota_bytes, used_bytes, alerted_at_ms) VALUES (?,?,?,?)",
                (tenant, quota_bytes, used_bytes, now_ms),
            )
            if rows:
                conn.executemany(OUTBOX_INSERT, rows)

        await self.store.run_tx(apply)

    async def forget_quota_alerts(self, tenants: list[str]) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM media_quota_alerts WHERE tenant=?", [(t,) for t in tenants]
            )

        await self.store.run_tx(apply)
