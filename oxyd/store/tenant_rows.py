"""A tenant's rows of oxyd.sqlite3, found generically: every table with a column named
`tenant` belongs to tenants (`tenants` itself is keyed by `id`). Tables added by later
migrations therefore move with a tenant without code here knowing them.

Used by cluster moves and `oxyd tenant export/import`. Each function opens its own connection
(run them in a thread): an export reads one consistent snapshot through ATTACH, which the
Store's connections cannot do inside their transactions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

BUSY_TIMEOUT_S = 30.0
TENANT_KEY = "tenant"
# Ours, not the tenant's: a node's own bookkeeping never travels in an archive.
LOCAL_TABLES = frozenset({"cluster_moves"})


class ImportRefused(Exception):
    """The archive cannot be imported here; `code` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect(db_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db_path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    con.execute("PRAGMA foreign_keys=ON")
    return con


def _columns(con: sqlite3.Connection, schema: str, table: str) -> list[tuple[str, str, int]]:
    """(name, declared type, pk position) of each column."""
    rows = con.execute(f"PRAGMA {schema}.table_info({_q(table)})").fetchall()
    return [(r[1], (r[2] or "").upper(), r[5]) for r in rows]


def tenant_tables(con: sqlite3.Connection, schema: str = "main") -> dict[str, str]:
    """{table: key column} of every table holding tenant rows, `tenants` first."""
    out = {"tenants": "id"}
    rows = con.execute(
        f"SELECT name, sql FROM {schema}.sqlite_master WHERE type='table' ORDER BY name"
    ).fetchall()
    for name, sql in rows:
        if name.startswith("sqlite_") or name in LOCAL_TABLES or name == "tenants":
            continue
        if (sql or "").upper().startswith("CREATE VIRTUAL"):
            continue  # derived (full-text indexes): rebuilt from their source, never copied
        if any(c[0] == TENANT_KEY for c in _columns(con, schema, name)):
            out[name] = TENANT_KEY
    return out


def _rowid_alias(cols: list[tuple[str, str, int]]) -> str | None:
    """The INTEGER PRIMARY KEY column, if any: its values are local row numbers that would
    collide with the importing node's own rows, so they are renumbered on import."""
    pks = [c for c in cols if c[2] > 0]
    if len(pks) == 1 and pks[0][1] == "INTEGER":
        return pks[0][0]
    return None


def export_rows(db_path: Path, tenant_id: str, dest: Path) -> dict[str, int]:
    """Copy the tenant's rows into a new SQLite file `dest`; {table: rows}."""
    con = _connect(db_path)
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        con.execute("ATTACH DATABASE ? AS arc", (str(dest),))
        counts: dict[str, int] = {}
        con.execute("BEGIN")  # one read snapshot of every table
        try:
            for table, key in tenant_tables(con).items():
                con.execute(
                    f"CREATE TABLE arc.{_q(table)} AS SELECT * FROM main.{_q(table)} WHERE 0"
                )
                cur = con.execute(
                    f"INSERT INTO arc.{_q(table)} SELECT * FROM main.{_q(table)}"
                    f" WHERE {_q(key)} = ?",
                    (tenant_id,),
                )
                counts[table] = cur.rowcount
            con.execute("CREATE TABLE arc.archive_meta (key TEXT PRIMARY KEY, value)")
            con.executemany(
                "INSERT INTO arc.archive_meta VALUES (?, ?)",
                [("tenant", tenant_id), ("schema_version", version)],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("DETACH DATABASE arc")
    finally:
        con.close()
    if counts.get("tenants") != 1:
        raise LookupError(f"no tenant {tenant_id!r} in {db_path.name}")
    return counts


def import_rows(
    db_path: Path, tenant_id: str, src: Path, extra: Iterable[tuple[str, tuple]] = ()
) -> dict[str, int]:
    """Insert the archive's rows in one transaction (with `extra` statements); {table: rows}.
    Refuses a tenant that exists here, and an archive made by a newer schema."""
    con = _connect(db_path)
    try:
        con.execute("ATTACH DATABASE ? AS arc", (str(src),))
        meta = dict(con.execute("SELECT key, value FROM arc.archive_meta").fetchall())
        if meta.get("tenant") != tenant_id:
            raise ImportRefused(
                "archive_mismatch", f"the archive holds tenant {meta.get('tenant')!r}"
            )
        ours = con.execute("PRAGMA user_version").fetchone()[0]
        if int(meta.get("schema_version") or 0) > ours:
            raise ImportRefused(
                "archive_too_new",
                f"the archive has schema version {meta['schema_version']}, this node {ours}:"
                " upgrade this node first",
            )
        here = tenant_tables(con)
        theirs = [
            r[0]
            for r in con.execute("SELECT name FROM arc.sqlite_master WHERE type='table'")
            if r[0] != "archive_meta"
        ]
        counts: dict[str, int] = {}
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("SELECT 1 FROM tenants WHERE id=?", (tenant_id,)).fetchone():
                raise ImportRefused("tenant_exists", f"tenant {tenant_id!r} exists here already")
            _delete(con, here, tenant_id)  # leftovers of an earlier, unpurged removal
            order = ["tenants", *sorted(t for t in theirs if t != "tenants")]
            for table in order:
                if table not in theirs:
                    continue
                if table not in here:
                    n = con.execute(f"SELECT count(*) FROM arc.{_q(table)}").fetchone()[0]
                    if n:
                        raise ImportRefused(
                            "archive_too_new", f"table {table} is unknown to this node"
                        )
                    continue
                cols_here = _columns(con, "main", table)
                alias = _rowid_alias(cols_here)
                arc_cols = {c[0] for c in _columns(con, "arc", table)}
                cols = [c[0] for c in cols_here if c[0] in arc_cols and c[0] != alias]
                names = ", ".join(map(_q, cols))
                cur = con.execute(
                    f"INSERT INTO main.{_q(table)} ({names}) SELECT {names} FROM arc.{_q(table)}"
                    f" WHERE {_q(here[table])} = ?"
                    + (f" ORDER BY {_q(alias)}" if alias and alias in arc_cols else ""),
                    (tenant_id,),
                )
                counts[table] = cur.rowcount
            for sql, args in extra:
                con.execute(sql, args)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("DETACH DATABASE arc")
        return counts
    finally:
        con.close()


def delete_rows(
    db_path: Path, tenant_id: str, extra: Iterable[tuple[str, tuple]] = ()
) -> dict[str, int]:
    """Remove every row of the tenant (after its new owner confirmed the move)."""
    con = _connect(db_path)
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            counts = _delete(con, tenant_tables(con), tenant_id)
            for sql, args in extra:
                con.execute(sql, args)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return counts
    finally:
        con.close()


def _delete(con: sqlite3.Connection, tables: dict[str, str], tenant_id: str) -> dict[str, int]:
    counts = {}
    # Children first, the tenants row last (other tables may reference it).
    for table in [t for t in tables if t != "tenants"] + ["tenants"]:
        cur = con.execute(f"DELETE FROM {_q(table)} WHERE {_q(tables[table])} = ?", (tenant_id,))
        counts[table] = cur.rowcount
    return counts
