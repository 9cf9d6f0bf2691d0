"""Queries for people and groups (design §13): contacts with both identities, the lookup
cache, cached groups and profile pictures. Reads use the store's read connection; writes are
small transactions of their own (the writer's batches carry what the engine reports)."""

from __future__ import annotations

from typing import Any

from oxyd import model as m
from oxyd.store.batch import IN_CHUNK
from oxyd.store.cursors import decode_cursor, encode_cursor
from oxyd.store.db import Store
from oxyd.store.people_events import GROUP_COLS, LID, PHONE, group_from_row, upsert_group

CONTACTS_CURSOR = (str,)  # after this JID

_CONTACT_SELECT = (
    "SELECT c.jid, c.push_name, c.full_name, c.first_name, c.business_name, c.updated_at_ms,"
    " (SELECT phone FROM lid_map WHERE tenant = c.tenant AND lid = c.jid),"
    " (SELECT lid FROM lid_map WHERE tenant = c.tenant AND phone = c.jid LIMIT 1)"
    " FROM contacts c"
)


def contact_json(row: tuple) -> dict[str, Any]:
    jid = row[0]
    return {
        "jid": jid,
        "phone": jid if jid.endswith(PHONE) else row[6],
        "lid": jid if jid.endswith(LID) else row[7],
        "push_name": row[1] or None,
        "name": row[2],
        "first_name": row[3],
        "business_name": row[4],
        "updated_at_ms": row[5],
    }


class Directory:
    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- contacts and identities ----

    async def contacts(
        self, tenant: str, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Ordered by JID, keyset-paged: stable while contacts are added."""
        where, args = "c.tenant = ?", [tenant]
        if cursor is not None:
            (after,) = decode_cursor(cursor, CONTACTS_CURSOR)
            where += " AND c.jid > ?"
            args.append(after)
        sql = f"{_CONTACT_SELECT} WHERE {where} ORDER BY c.jid LIMIT ?"
        async with self.store.ro.execute(sql, (*args, limit + 1)) as cur:
            rows = list(await cur.fetchall())
        nxt = encode_cursor(rows[limit - 1][0]) if len(rows) > limit else None
        return [contact_json(r) for r in rows[:limit]], nxt

    async def contact(self, tenant: str, jid: str) -> dict[str, Any] | None:
        async with self.store.ro.execute(
            f"{_CONTACT_SELECT} WHERE c.tenant = ? AND c.jid = ?", (tenant, jid)
        ) as cur:
            row = await cur.fetchone()
        return contact_json(row) if row else None

    async def other_form(self, tenant: str, jid: str) -> str | None:
        """The phone JID of a LID, or the LID of a phone JID, from the LID map."""
        if jid.endswith(LID):
            sql = "SELECT phone FROM lid_map WHERE tenant = ? AND lid = ?"
        else:
            sql = "SELECT lid FROM lid_map WHERE tenant = ? AND phone = ? LIMIT 1"
        async with self.store.ro.execute(sql, (tenant, jid)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    # ---- lookup cache ----

    async def cached_lookups(
        self, tenant: str, phones: list[str], fresh_after_ms: int
    ) -> dict[str, m.LookupResult]:
        rows = []
        # Chunked like every IN list built from input (the API caps phones; this does not rely
        # on it): a long list would be a statement SQLite refuses every time.
        for i in range(0, len(phones), IN_CHUNK):
            chunk = phones[i : i + IN_CHUNK]
            async with self.store.ro.execute(
                "SELECT phone, on_whatsapp, jid, lid FROM lookups WHERE tenant = ?"
                f" AND phone IN ({','.join('?' * len(chunk))}) AND checked_at_ms > ?",
                (tenant, *chunk, fresh_after_ms),
            ) as cur:
                rows += await cur.fetchall()
        return {r[0]: m.LookupResult(r[0], bool(r[1]), r[2], r[3]) for r in rows}

    async def save_lookups(self, tenant: str, results: list[m.LookupResult], now_ms: int) -> None:
        async with self.store.tx() as db:
            await db.executemany(
                "INSERT INTO lookups (tenant, phone, on_whatsapp, jid, lid, checked_at_ms)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
                " on_whatsapp=excluded.on_whatsapp, jid=excluded.jid, lid=excluded.lid,"
                " checked_at_ms=excluded.checked_at_ms",
                [(tenant, r.phone, int(r.on_whatsapp), r.jid, r.lid, now_ms) for r in results],
            )

    # ---- groups ----

    async def groups(self, tenant: str) -> list[dict[str, Any]]:
        async with self.store.ro.execute(
            f"SELECT {GROUP_COLS} FROM groups WHERE tenant = ? ORDER BY jid", (tenant,)
        ) as cur:
            return [group_from_row(r) for r in await cur.fetchall()]

    async def group(self, tenant: str, jid: str) -> dict[str, Any] | None:
        async with self.store.ro.execute(
            f"SELECT {GROUP_COLS} FROM groups WHERE tenant = ? AND jid = ?", (tenant, jid)
        ) as cur:
            row = await cur.fetchone()
        return group_from_row(row) if row else None

    async def save_groups(
        self, tenant: str, groups: list[dict[str, Any]], now_ms: int, *, replace: bool
    ) -> None:
        """Upsert these groups; `replace`: they are all the account's groups (a full list)."""

        def run(conn):
            if replace:
                conn.execute("DELETE FROM groups WHERE tenant = ?", (tenant,))
            for g in groups:
                upsert_group(conn, tenant, g, now_ms)

        await self.store.run_tx(run)

    async def forget_group(self, tenant: str, jid: str) -> None:
        async with self.store.tx() as db:
            await db.execute("DELETE FROM groups WHERE tenant = ? AND jid = ?", (tenant, jid))

    # ---- profile pictures ----

    async def picture(self, tenant: str, jid: str) -> tuple[str | None, str, bytes, int] | None:
        """(picture_id or None for "has none", mime, bytes, checked_at_ms), or None."""
        async with self.store.ro.execute(
            "SELECT picture_id, mime, data, checked_at_ms FROM pictures"
            " WHERE tenant = ? AND jid = ?",
            (tenant, jid),
        ) as cur:
            row = await cur.fetchone()
        return (row[0], row[1] or "image/jpeg", row[2] or b"", row[3]) if row else None

    async def save_picture(self, tenant: str, jid: str, pic: m.Picture | None, now_ms: int) -> None:
        """A new picture, "none", or (data None) "the cached one is still current"."""
        async with self.store.tx() as db:
            if pic is not None and pic.data is None:
                await db.execute(
                    "UPDATE pictures SET checked_at_ms = ? WHERE tenant = ? AND jid = ?",
                    (now_ms, tenant, jid),
                )
                return
            await db.execute(
                "INSERT INTO pictures (tenant, jid, picture_id, mime, data, checked_at_ms)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
                " picture_id=excluded.picture_id, mime=excluded.mime, data=excluded.data,"
                " checked_at_ms=excluded.checked_at_ms",
                (
                    tenant,
                    jid,
                    pic.id if pic else None,
                    pic.mime if pic else None,
                    pic.data if pic else None,
                    now_ms,
                ),
            )
