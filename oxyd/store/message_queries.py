"""Store queries that read what tenants received (messages, chats, history syncs) and prune
it (retention)."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from oxyd.store.connection import Connections
from oxyd.store.cursors import CHATS_CURSOR, MESSAGES_CURSOR, decode_cursor, encode_cursor

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


class MessageQueries(Connections):
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
