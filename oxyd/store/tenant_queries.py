"""Store queries about tenants: their rows and state history, their API tokens, their
webhook destinations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import aiosqlite

from oxyd.model import State, Tenant
from oxyd.store.connection import Connections
from oxyd.store.outbox import insert_outbox


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


class TenantQueries(Connections):
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
