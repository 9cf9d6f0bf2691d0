"""cluster_moves: a node's own record of tenants it is handing out ('out') or has received
('in'). An 'out' row is written before the tenant stops and removed in the same transaction
that deletes the tenant's rows, so a node that restarts mid-move knows the move began and
asks the peer before it runs the tenant again."""

from __future__ import annotations

from typing import Any

from oxyd.store.db import Store

OUT, IN = "out", "in"

DELETE_SQL = "DELETE FROM cluster_moves WHERE tenant_id=? AND direction=?"
UPSERT_SQL = (
    "INSERT INTO cluster_moves (tenant_id, direction, peer, sha256, step, updated_at_ms)"
    " VALUES (?,?,?,?,?,?) ON CONFLICT (tenant_id, direction) DO UPDATE SET"
    " peer=excluded.peer, sha256=excluded.sha256, step=excluded.step,"
    " updated_at_ms=excluded.updated_at_ms"
)


def upsert_args(
    tenant_id: str, direction: str, peer: int, sha256: str | None, step: str, now_ms: int
) -> tuple:
    return (tenant_id, direction, peer, sha256, step, now_ms)


async def record(
    store: Store,
    tenant_id: str,
    direction: str,
    peer: int,
    sha256: str | None,
    step: str,
    now_ms: int,
) -> None:
    async with store.tx() as db:
        await db.execute(UPSERT_SQL, upsert_args(tenant_id, direction, peer, sha256, step, now_ms))


async def forget(store: Store, tenant_id: str, direction: str) -> None:
    async with store.tx() as db:
        await db.execute(DELETE_SQL, (tenant_id, direction))


async def all_moves(store: Store, direction: str) -> dict[str, dict[str, Any]]:
    async with store.ro.execute(
        "SELECT tenant_id, peer, sha256, step, updated_at_ms FROM cluster_moves WHERE direction=?",
        (direction,),
    ) as cur:
        return {
            r[0]: {"peer": r[1], "sha256": r[2], "step": r[3], "updated_at_ms": r[4]}
            for r in await cur.fetchall()
        }


async def get(store: Store, tenant_id: str, direction: str) -> dict[str, Any] | None:
    async with store.ro.execute(
        "SELECT peer, sha256, step, updated_at_ms FROM cluster_moves"
        " WHERE tenant_id=? AND direction=?",
        (tenant_id, direction),
    ) as cur:
        r = await cur.fetchone()
    return {"peer": r[0], "sha256": r[1], "step": r[2], "updated_at_ms": r[3]} if r else None
