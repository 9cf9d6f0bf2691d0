"""People and group events inside the writer's batch transaction (runs on the database thread).

- IdentityLearned: the LID map row, a backfill of `sender_alt`/`chat_alt` on the LID-addressed
  messages stored before the mapping was known, and a `contact.identity` event.
- ContactName: saved (address book) and business names on the contact row.
- GroupJoined / GroupChanged: the cached group row, and `group.updated` /
  `group.participants` events.
- CallRejected: a `call.rejected` event.
Message rows get their missing alt from the LID map before they are inserted (fill_alts).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

from oxyd import model as m
from oxyd.store import outbox

LID, PHONE = "@lid", "@s.whatsapp.net"
# A VALUES list of (tenant, jid) pairs per query: far below SQLite's variable limit.
CHUNK = 400
# Row tuple positions of batch.message_row.
_TENANT, _CHAT, _SENDER, _WA_ID, _CHAT_ALT, _SENDER_ALT = 0, 1, 2, 3, 9, 10


def participant_json(p: m.Participant) -> dict[str, Any]:
    return {"jid": p.jid, "lid": p.lid, "phone": p.phone, "role": p.role}


def group_json(g: m.Group) -> dict[str, Any]:
    return {
        "jid": g.jid,
        "subject": g.subject,
        "description": g.description,
        "owner": g.owner,
        "created_at_ms": g.created_at_ms,
        "announce": g.announce,
        "locked": g.locked,
        "participants": [participant_json(p) for p in g.participants if p.error is None],
    }


def upsert_group(conn: sqlite3.Connection, tenant: str, g: dict[str, Any], now_ms: int) -> None:
    conn.execute(
        "INSERT INTO groups (tenant, jid, subject, description, owner, created_at_ms, announce,"
        " locked, participants, updated_at_ms) VALUES (?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT DO UPDATE SET subject=excluded.subject,"
        " description=excluded.description, owner=excluded.owner,"
        " created_at_ms=excluded.created_at_ms, announce=excluded.announce,"
        " locked=excluded.locked, participants=excluded.participants,"
        " updated_at_ms=excluded.updated_at_ms",
        (
            tenant,
            g["jid"],
            g["subject"],
            g["description"],
            g["owner"],
            g["created_at_ms"],
            int(bool(g["announce"])),
            int(bool(g["locked"])),
            json.dumps(g["participants"]),
            now_ms,
        ),
    )


GROUP_COLS = "jid, subject, description, owner, created_at_ms, announce, locked, participants"


def group_from_row(row: tuple) -> dict[str, Any]:
    participants = json.loads(row[7])
    return {
        "jid": row[0],
        "subject": row[1],
        "description": row[2],
        "owner": row[3],
        "created_at_ms": row[4],
        "announce": bool(row[5]),
        "locked": bool(row[6]),
        "participants": participants,
        "size": len(participants),
    }


def _candidate(jid: str | None) -> bool:
    return jid is not None and (jid.endswith(LID) or jid.endswith(PHONE))


def fill_alts(
    conn: sqlite3.Connection,
    rows: list[tuple],
    live: dict,
    subs: outbox.Subscriptions | None = None,
) -> list[tuple]:
    """Message rows with `chat_alt`/`sender_alt` filled from the LID map where the engine gave
    none; the live items of tenants with a message webhook (its payload) get the same values."""
    if not rows or conn.execute("SELECT 1 FROM lid_map LIMIT 1").fetchone() is None:
        return rows
    need: set[tuple[str, str]] = set()
    for r in rows:
        if r[_CHAT_ALT] is None and _candidate(r[_CHAT]):
            need.add((r[_TENANT], r[_CHAT]))
        if r[_SENDER_ALT] is None and _candidate(r[_SENDER]):
            need.add((r[_TENANT], r[_SENDER]))
    known = _other_forms(conn, list(need))
    if not known:
        return rows
    out = []
    for r in rows:
        chat_alt = r[_CHAT_ALT] or known.get((r[_TENANT], r[_CHAT]))
        sender_alt = r[_SENDER_ALT] or known.get((r[_TENANT], r[_SENDER]))
        if chat_alt != r[_CHAT_ALT] or sender_alt != r[_SENDER_ALT]:
            r = (*r[:_CHAT_ALT], chat_alt, sender_alt, *r[_SENDER_ALT + 1 :])
            it = live.get((r[_TENANT], r[_CHAT], r[_SENDER], r[_WA_ID]))
            # A payload copy only for a webhook that will carry it: replace() is the cost here.
            if it is not None and subs is not None and _hooked(subs, r[_TENANT]):
                it.payload = dataclasses.replace(
                    it.payload, chat_alt=chat_alt, sender_alt=sender_alt
                )
        out.append(r)
    return out


def _hooked(subs: outbox.Subscriptions, tenant: str) -> bool:
    return subs.wants(tenant, "message.received") or subs.wants(tenant, "message.sent")


def _other_forms(conn: sqlite3.Connection, pairs: list[tuple[str, str]]) -> dict:
    known: dict[tuple[str, str], str] = {}
    for i in range(0, len(pairs), CHUNK):
        chunk = pairs[i : i + CHUNK]
        values = ",".join("(?,?)" for _ in chunk)
        args = [x for pair in chunk for x in pair]
        for tenant, lid, phone in conn.execute(
            f"WITH w(t, j) AS (VALUES {values})"
            " SELECT l.tenant, l.lid, l.phone FROM w JOIN lid_map l"
            " ON l.tenant = w.t AND l.lid = w.j"
            " UNION ALL"
            " SELECT l.tenant, l.lid, l.phone FROM w JOIN lid_map l"
            " ON l.tenant = w.t AND l.phone = w.j",
            args,
        ):
            known[(tenant, lid)] = phone
            known[(tenant, phone)] = lid
    return known


def apply(
    conn: sqlite3.Connection,
    items: list[tuple[str, Any]],
    subs: outbox.Subscriptions,
    events: list[tuple],
    now_ms: int,
) -> None:
    """Store (tenant, event) pairs in order; outbox rows are appended to `events`."""
    for tenant, ev in items:
        if isinstance(ev, m.IdentityLearned):
            _identity(conn, tenant, ev, subs, events, now_ms)
        elif isinstance(ev, m.ContactName):
            conn.execute(
                "INSERT INTO contacts (tenant, jid, push_name, updated_at_ms, full_name,"
                " first_name, business_name) VALUES (?,?,'',?,?,?,?) ON CONFLICT DO UPDATE SET"
                " full_name=coalesce(excluded.full_name, full_name),"
                " first_name=coalesce(excluded.first_name, first_name),"
                " business_name=coalesce(excluded.business_name, business_name),"
                " updated_at_ms=excluded.updated_at_ms",
                (tenant, ev.jid, now_ms, ev.full_name, ev.first_name, ev.business_name),
            )
        elif isinstance(ev, m.GroupJoined):
            g = group_json(ev.group)
            upsert_group(conn, tenant, g, now_ms)
            full = {**g, "size": len(g["participants"])}
            data = {"jid": g["jid"], "change": "joined", "group": full}
            events += outbox.rows(subs, tenant, "group.updated", data, now_ms)
        elif isinstance(ev, m.GroupChanged):
            _group_changed(conn, tenant, ev, subs, events, now_ms)
        elif isinstance(ev, m.CallRejected):
            data = {"call_id": ev.call_id, "from": ev.caller, "at_ms": ev.at_ms, "video": ev.video}
            events += outbox.rows(subs, tenant, "call.rejected", data, now_ms)


def _identity(conn, tenant, ev: m.IdentityLearned, subs, events, now_ms) -> None:
    if not (ev.lid.endswith(LID) and ev.phone.endswith(PHONE)):
        return
    row = conn.execute(
        "SELECT phone FROM lid_map WHERE tenant=? AND lid=?", (tenant, ev.lid)
    ).fetchone()
    if row is not None and row[0] == ev.phone:
        return  # known already: no event, no backfill
    conn.execute(
        "INSERT INTO lid_map (tenant, lid, phone, learned_at_ms) VALUES (?,?,?,?)"
        " ON CONFLICT DO UPDATE SET phone=excluded.phone, learned_at_ms=excluded.learned_at_ms",
        (tenant, ev.lid, ev.phone, now_ms),
    )
    # The partial indexes messages_lid_sender/_chat hold exactly the rows these touch.
    n = conn.execute(
        "UPDATE messages SET sender_alt=? WHERE tenant=? AND sender=? AND sender_alt IS NULL"
        " AND sender LIKE '%@lid'",
        (ev.phone, tenant, ev.lid),
    ).rowcount
    n += conn.execute(
        "UPDATE messages SET chat_alt=? WHERE tenant=? AND chat=? AND chat_alt IS NULL"
        " AND chat LIKE '%@lid'",
        (ev.phone, tenant, ev.lid),
    ).rowcount
    data = {"lid": ev.lid, "phone": ev.phone, "messages_updated": n}
    events += outbox.rows(subs, tenant, "contact.identity", data, now_ms)


def _group_changed(conn, tenant, ev: m.GroupChanged, subs, events, now_ms) -> None:
    row = conn.execute(
        f"SELECT {GROUP_COLS} FROM groups WHERE tenant=? AND jid=?", (tenant, ev.jid)
    ).fetchone()
    g = group_from_row(row) if row else None
    changes = {
        k: getattr(ev, k)
        for k in ("subject", "description", "announce", "locked")
        if getattr(ev, k) is not None
    }
    own = conn.execute("SELECT jid FROM tenants WHERE id=?", (tenant,)).fetchone()
    own_jid = own[0] if own else None
    left = own_jid is not None and own_jid in ev.leave
    if g is not None:
        g.update(changes)
        members = g["participants"]
        for jid in ev.join:
            if not any(jid in (p["jid"], p.get("lid")) for p in members):
                lid = jid if jid.endswith(LID) else None
                phone = jid if jid.endswith(PHONE) else None
                members.append({"jid": jid, "lid": lid, "phone": phone, "role": "member"})
        gone = set(ev.leave)
        members[:] = [p for p in members if not ({p["jid"], p.get("lid")} & gone)]
        for jids, role in ((ev.promote, "admin"), (ev.demote, "member")):
            for p in members:
                if {p["jid"], p.get("lid")} & set(jids):
                    p["role"] = role
        if left:
            conn.execute("DELETE FROM groups WHERE tenant=? AND jid=?", (tenant, ev.jid))
        else:
            upsert_group(conn, tenant, g, now_ms)
    meta = {"jid": ev.jid, "by": ev.by, "at_ms": ev.at_ms or now_ms}
    if changes:
        data = {**meta, "change": "info", "changes": changes}
        if g is not None:
            data["group"] = {k: v for k, v in g.items() if k != "participants"}
        events += outbox.rows(subs, tenant, "group.updated", data, now_ms)
    for action, jids in (
        ("add", ev.join),
        ("remove", ev.leave),
        ("promote", ev.promote),
        ("demote", ev.demote),
    ):
        if jids:
            data = {**meta, "action": action, "participants": list(jids)}
            events += outbox.rows(subs, tenant, "group.participants", data, now_ms)
