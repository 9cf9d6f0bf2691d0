"""The media table's retention queries (oxyd/media/retention.py runs them): rows whose
message is gone, files past media.retention_days, and the hashes a tenant still refers to."""

from __future__ import annotations

import sqlite3

from oxyd.store.db import Store


async def drop_orphans(store: Store, batch: int = 5000) -> int:
    """Media rows whose message is gone (message retention, purge)."""
    return await store.delete_in_batches(
        "DELETE FROM media WHERE id IN (SELECT m.id FROM media m WHERE NOT EXISTS"
        " (SELECT 1 FROM messages x WHERE x.tenant=m.tenant AND x.chat=m.chat"
        " AND x.sender=m.sender AND x.wa_id=m.wa_id) LIMIT ?)",
        (),
        batch,
    )


async def expire_before(store: Store, before_ms: int, now_ms: int, limit: int = 5000) -> int:
    """media.retention_days: stored rows of messages older than the cutoff let go of their
    file (the message stays; its media shows as skipped with the reason)."""
    reason = "deleted by media.retention_days"

    def apply(conn: sqlite3.Connection) -> int:
        ids = conn.execute(
            "SELECT id, tenant, chat, sender, wa_id FROM media WHERE status='stored'"
            " AND sent_at_ms < ? LIMIT ?",
            (before_ms, limit),
        ).fetchall()
        conn.executemany(
            "UPDATE media SET status='skipped', reason=?, done_at_ms=? WHERE id=?",
            [(reason, now_ms, i[0]) for i in ids],
        )
        conn.executemany(
            "UPDATE messages SET media=json_set(media, '$.status', 'skipped', '$.reason', ?,"
            " '$.url', NULL) WHERE tenant=? AND chat=? AND sender=? AND wa_id=?",
            [(reason, *i[1:]) for i in ids],
        )
        return len(ids)

    total = 0
    while (n := await store.run_tx(apply)) > 0:
        total += n
        if n < limit:
            break
    return total


async def referenced(store: Store, tenant: str) -> set[str]:
    """Hashes a tenant's stored rows still point at."""
    async with store.ro.execute(
        "SELECT DISTINCT sha256 FROM media WHERE tenant=? AND status='stored'", (tenant,)
    ) as cur:
        return {r[0] for r in await cur.fetchall() if r[0]}
