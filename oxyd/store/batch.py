"""One batch in one transaction, on the database thread: the SQL side of the writer.

Messages go in with INSERT .. ON CONFLICT DO NOTHING on (tenant, chat, sender, wa_id), so a
redelivery is a no-op and a distinct message is never dropped. Rows inserted by this batch are
exactly those with an id above the largest id before it (SQLite's rowid allocation), which is
how chats, counters and webhook events are derived from what was really stored, duplicates
excluded, without a query per message.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from oxyd.config import MediaConfig
from oxyd.model import HistorySync, Message, Receipt
from oxyd.store import media as media_rows
from oxyd.store import outbox, people_events
from oxyd.store.message_queries import MESSAGE_COLS, message_json
from oxyd.store.outbox import OUTBOX_INSERT

INSERT_MESSAGE = (
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
MEDIA_DEFAULTS = MediaConfig()  # frozen: safe to share
_RECEIPT_COL = {"delivered": "delivered_at_ms", "read": "read_at_ms", "played": "played_at_ms"}


def message_row(
    tenant: str, m: Message, now_ms: int, media_cfg: MediaConfig = MEDIA_DEFAULTS
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


def apply(
    conn,
    subs,
    media_cfg,
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
        people_events.apply(conn, people, subs, events, now_ms)
    rows = people_events.fill_alts(conn, rows, live, subs)
    if rows:
        conn.executemany(INSERT_MESSAGE, rows)
    synced = []
    for it in histories:
        h: HistorySync = it.payload
        history_rows = [message_row(it.tenant, m, now_ms, media_cfg) for m in h.messages]
        cur = conn.executemany(INSERT_MESSAGE, people_events.fill_alts(conn, history_rows, {}))
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
        events += outbox.rows(subs, it.tenant, "history.synced", summary, now_ms)
    new_rows = conn.execute(
        "SELECT id, tenant, chat, sender, wa_id, sent_at_ms, from_me, from_history"
        " FROM messages WHERE id > ? ORDER BY id",
        (max_before,),
    ).fetchall()
    stored_by_tenant = _derive(conn, subs, media_cfg, new_rows, live, events, now_ms)
    media_pending = (
        media_rows.queue_new(conn, media_cfg, new_rows, media_msgs, now_ms) if media_msgs else 0
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
        _receipt(conn, subs, it.tenant, it.payload, events, now_ms)
    if events:
        conn.executemany(OUTBOX_INSERT, events)
    return new_rows, synced, stored_by_tenant, media_pending


def _derive(db, subs, media_cfg, new_rows, live, events, now_ms) -> dict[str, int]:
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
        if subs.wants(tenant, etype):
            data = message_data(tenant, it.payload, "sent" if from_me else "received", media_cfg)
            events += outbox.rows(subs, tenant, etype, data, now_ms)
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


def _receipt(db, subs, tenant: str, r: Receipt, events: list, now_ms: int) -> None:
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
    if subs.wants(tenant, "message.status"):
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
                events += outbox.rows(subs, tenant, "message.status", message_json(row), now_ms)


def message_data(tenant: str, m: Message, status: str, media_cfg: MediaConfig) -> dict[str, Any]:
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
