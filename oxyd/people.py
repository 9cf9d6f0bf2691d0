"""People and groups (design §13): the service between the HTTP routes and a tenant's client.

Every call that reaches WhatsApp needs the tenant connected (409 `not_connected` otherwise:
some neonize calls kill the process on a client that is not running) and is bounded in time.
Lookups and pictures are answered from oxyd.sqlite3 for `lookup.cache_s`; a lookup query that
does reach WhatsApp takes a token from the tenant's send rate bucket (one per query of up to 50
numbers), because checking numbers in bulk is what gets a number banned. What the engine
learns on the way (LIDs) goes through the writer like any engine event, so `contact.identity`
and the backfill happen in one place.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from oxyd import model as m
from oxyd.engine import NotConnected, NotFound, Refused
from oxyd.model import State
from oxyd.store.directory import Directory
from oxyd.store.people_events import group_json
from oxyd.supervision.errors import RateLimited, TenantError
from oxyd.supervision.supervisor import Supervisor

CALL_TIMEOUT_S = 30.0
# WhatsApp's per-participant refusal codes, as words a client can branch on.
PARTICIPANT_ERRORS = {
    400: "bad_request",
    401: "not_authorized",
    403: "not_allowed",  # on add: their privacy settings; send them the invite link
    404: "not_found",  # not on WhatsApp, or not in the group
    406: "not_acceptable",
    408: "left_recently",
    409: "already_participant",
    500: "server_error",
}
INVITE_PREFIX = "https://chat.whatsapp.com/"


class People:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.dir = Directory(sup.store)
        self._groups_synced: set[str] = set()  # tenants whose list was fetched this process
        self._book_synced: set[str] = set()  # tenants whose address book was read
        # For /metrics: requests sent to WhatsApp per (tenant, method), lookup answers by source.
        self.requests: Counter[tuple[str, str]] = Counter()
        self.lookups: Counter[str] = Counter()

    # ---- plumbing ----

    def _runner(self, tenant: str, *, take: int = 0):
        r = self.sup.runner(tenant)
        if r.t.state is not State.CONNECTED:
            raise TenantError("not_connected", f"tenant is {r.t.state}, not connected")
        for _ in range(take):
            wait_s = r.bucket.take()
            if wait_s > 0:
                raise RateLimited(wait_s)
        return r

    async def _call(self, r, method: str, *args: Any) -> Any:
        if method != "identity" and method != "address_book":  # those two stay on the device
            self.requests[(r.t.id, method)] += 1
        try:
            return await self.sup.bounded(getattr(r.client, method)(*args), CALL_TIMEOUT_S)
        except NotConnected as e:
            raise TenantError("not_connected", str(e) or "tenant is not connected") from e
        except TimeoutError:
            raise TenantError(
                "engine_timeout", f"WhatsApp did not answer within {CALL_TIMEOUT_S:g}s", 504
            ) from None
        except NotFound as e:
            raise TenantError("not_found", str(e), 404) from e
        except Refused as e:
            raise TenantError("not_allowed", str(e), 403) from e

    def _learned(self, tenant: str, pairs: list[tuple[str, str]]) -> None:
        """LID <-> phone pairs learned from an answer: stored (and backfilled) by the writer."""
        events = [m.IdentityLearned(lid, phone) for lid, phone in pairs if lid and phone]
        while events:
            taken = self.sup.writer.offer(tenant, events)
            if not taken:
                break  # the writer is full: the engine reports the mapping again later
            events = events[taken:]

    def _now_ms(self) -> int:
        return self.sup.clock.now_ms()

    # ---- lookup ----

    async def lookup(self, tenant: str, phones: list[str]) -> list[dict[str, Any]]:
        self.sup.runner(tenant)
        fresh_after = self._now_ms() - int(self.sup.cfg.lookup.cache_s * 1000)
        cached = await self.dir.cached_lookups(tenant, phones, fresh_after)
        missing = [p for p in dict.fromkeys(phones) if p not in cached]
        self.lookups["cache"] += len(phones) - len(missing)
        self.lookups["whatsapp"] += len(missing)
        if missing:
            r = self._runner(tenant, take=1)  # one query for all of them
            found = await self._call(r, "lookup", missing)
            await self.dir.save_lookups(tenant, found, self._now_ms())
            self._learned(tenant, [(x.lid, x.jid) for x in found if x.on_whatsapp])
            names = [m.ContactName(x.jid, business_name=x.business_name) for x in found]
            self.sup.writer.offer(tenant, [n for n in names if n.jid and n.business_name])
            cached.update({x.phone: x for x in found})
        return [_lookup_json(cached.get(p) or m.LookupResult(p, False)) for p in phones]

    # ---- contacts ----

    async def contacts(
        self, tenant: str, limit: int, cursor: str | None, refresh: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The store's contacts; the device's address book is read into it once per daemon
        run while connected (and with `refresh`), before the first page is answered."""
        r = self.sup.runner(tenant)
        if cursor is None and (
            refresh or (tenant not in self._book_synced and r.t.state is State.CONNECTED)
        ):
            book = await self._call(self._runner(tenant), "address_book")
            self._book_synced.add(tenant)
            await self._store_events(tenant, book)
        return await self.dir.contacts(tenant, limit, cursor)

    async def _store_events(self, tenant: str, events: list) -> None:
        """Hand engine-style data events to the writer and wait until they are committed."""
        while events:
            taken = self.sup.writer.offer(tenant, events)
            events = events[taken:]
            if events:
                await self.sup.writer.wait_room()
        await self.sup.writer.flush()

    async def contact(self, tenant: str, jid: str, refresh: bool = False) -> dict[str, Any] | None:
        self.sup.runner(tenant)
        if refresh:  # one usync query: the business name and the LID, as WhatsApp has them
            info = await self._call(self._runner(tenant), "user_info", jid)
            events: list = []
            if info.get("business_name"):
                events.append(m.ContactName(jid, business_name=info["business_name"]))
            if info.get("lid") and jid.endswith("@s.whatsapp.net"):
                events.append(m.IdentityLearned(info["lid"], jid))
            await self._store_events(tenant, events)
        found = await self.dir.contact(tenant, jid)
        other = (found or {}).get("lid" if jid.endswith("@s.whatsapp.net") else "phone")
        if other in (None, jid):
            other = await self.dir.other_form(tenant, jid)
        if other is None and self.sup.runner(tenant).t.state is State.CONNECTED:
            # whatsmeow's LID map is local (no server call): ask it for what we lack.
            try:
                other = await self._call(self.sup.runner(tenant), "identity", jid)
            except TenantError:
                other = None
            if other:
                lid, phone = (jid, other) if jid.endswith("@lid") else (other, jid)
                self._learned(tenant, [(lid, phone)])
        if found is None and other is None:
            return None
        out = found or {
            "jid": jid,
            "phone": None,
            "lid": None,
            "push_name": None,
            "name": None,
            "first_name": None,
            "business_name": None,
            "updated_at_ms": None,
        }
        is_lid = jid.endswith("@lid")
        out["lid"] = jid if is_lid else (out["lid"] or other)
        out["phone"] = (out["phone"] or other) if is_lid else jid
        return out

    async def picture(self, tenant: str, jid: str) -> tuple[bytes, str, str] | None:
        """(bytes, mime, picture id) or None when the contact has no picture."""
        self.sup.runner(tenant)
        cached = await self.dir.picture(tenant, jid)
        fresh_after = self._now_ms() - int(self.sup.cfg.lookup.cache_s * 1000)
        if cached is None or cached[3] <= fresh_after:
            r = self._runner(tenant)
            known_id = cached[0] if cached and cached[2] else None
            pic = await self._call(r, "picture", jid, known_id)
            await self.dir.save_picture(tenant, jid, pic, self._now_ms())
            if pic is None or pic.data is not None:
                return (pic.data, pic.mime, pic.id) if pic is not None else None
        return (cached[2], cached[1], cached[0]) if cached and cached[0] else None

    # ---- groups ----

    async def groups(self, tenant: str, refresh: bool) -> list[dict[str, Any]]:
        r = self.sup.runner(tenant)
        if refresh or (tenant not in self._groups_synced and r.t.state is State.CONNECTED):
            groups = await self._call(self._runner(tenant), "groups")
            await self.dir.save_groups(
                tenant, [group_json(g) for g in groups], self._now_ms(), replace=True
            )
            self._groups_synced.add(tenant)
            self._learned(tenant, _pairs(groups))
        return await self.dir.groups(tenant)

    async def group(self, tenant: str, jid: str, refresh: bool = True) -> dict[str, Any]:
        r = self.sup.runner(tenant)
        if refresh and r.t.state is State.CONNECTED:
            g = await self._call(r, "group", jid)
            await self.dir.save_groups(tenant, [group_json(g)], self._now_ms(), replace=False)
            self._learned(tenant, _pairs([g]))
        found = await self.dir.group(tenant, jid)
        if found is None:
            raise TenantError("group_not_found", f"no group {jid!r} known for this tenant", 404)
        return found

    async def create_group(self, tenant: str, subject: str, participants: list[str]) -> dict:
        r = self._runner(tenant)
        g = await self._call(r, "create_group", subject, participants)
        await self.dir.save_groups(tenant, [group_json(g)], self._now_ms(), replace=False)
        out = await self.dir.group(tenant, g.jid) or group_json(g)
        out["results"] = [_participant_result(p) for p in g.participants if p.jid != g.owner]
        return out

    async def participants(
        self, tenant: str, jid: str, action: str, participants: list[str]
    ) -> dict[str, Any]:
        r = self._runner(tenant)
        results = await self._call(r, "update_participants", jid, action, participants)
        group = await self.group(tenant, jid)  # the group as WhatsApp has it now
        return {
            "jid": jid,
            "action": action,
            "results": [_participant_result(p) for p in results],
            "group": group,
        }

    async def invite(self, tenant: str, jid: str, reset: bool) -> dict[str, Any]:
        r = self._runner(tenant)
        link = await self._call(r, "invite_link", jid, reset)
        if not link.startswith("https://"):
            link = INVITE_PREFIX + link
        return {"jid": jid, "link": link}

    async def join(self, tenant: str, invite: str) -> dict[str, Any]:
        code = invite.removeprefix(INVITE_PREFIX).removeprefix("http://chat.whatsapp.com/")
        r = self._runner(tenant)
        jid = await self._call(r, "join_group", code)
        try:
            return await self.group(tenant, jid)
        except TenantError:
            return {"jid": jid}

    async def leave(self, tenant: str, jid: str) -> dict[str, Any]:
        r = self._runner(tenant)
        await self._call(r, "leave_group", jid)
        await self.dir.forget_group(tenant, jid)
        return {"jid": jid, "left": True}


def _lookup_json(x: m.LookupResult) -> dict[str, Any]:
    return {"phone": x.phone, "on_whatsapp": x.on_whatsapp, "jid": x.jid, "lid": x.lid}


def _participant_result(p: m.Participant) -> dict[str, Any]:
    return {
        "jid": p.jid,
        "ok": p.error is None,
        "error": None if p.error is None else PARTICIPANT_ERRORS.get(p.error, f"error_{p.error}"),
        "code": p.error,
        "role": p.role if p.error is None else None,
    }


def _pairs(groups: list[m.Group]) -> list[tuple[str, str]]:
    return [(p.lid, p.phone) for g in groups for p in g.participants if p.lid and p.phone]
