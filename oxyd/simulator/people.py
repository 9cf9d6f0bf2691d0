"""The simulated WhatsApp's people and groups: who is on WhatsApp, LIDs, pictures, groups,
calls and presence (design §15 `contacts`, `group`).

The simulated server's knowledge lives in the device file (`people`), so it survives restarts
like WhatsApp's would. Every request that would reach WhatsApp's servers is counted in
`server_calls` (simulate `server`), which is how the lookup and picture caches are tested.
Numbers are on WhatsApp when a `contacts` action named them or they are in a simulated group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import secrets
import string
from collections import Counter
from typing import TYPE_CHECKING, Any

from oxyd import model as m
from oxyd.engine import NotConnected, NotFound, Refused
from oxyd.simulator.actions import SimulationError, field

if TYPE_CHECKING:
    from oxyd.simulator.engine import SimulatorClient

INVITE_PREFIX = "https://chat.whatsapp.com/"
MAX_PHONES = 10_000
_ALNUM = string.ascii_letters + string.digits  # invite codes, as WhatsApp's look


def phone_jid(value: str) -> str:
    """A number or a JID as a JID (device part dropped)."""
    if "@" in value:
        user, _, server = value.partition("@")
        return f"{user.split(':')[0]}@{server}"
    return f"{value.lstrip('+')}@s.whatsapp.net"


def lid_of(jid: str) -> str:
    """The simulated server's stable LID for a phone JID (a 15-digit number, like real ones)."""
    digest = hashlib.sha256(jid.encode()).digest()
    return f"{10**14 + int.from_bytes(digest[:8], 'big') % (9 * 10**14)}@lid"


def _picture_png(jid: str) -> bytes:
    import segno

    buf = io.BytesIO()
    segno.make(jid, error="l").save(buf, kind="png", scale=4)
    return buf.getvalue()


class PeopleMixin:
    """Client methods for people and groups (mixed into SimulatorClient)."""

    def _people_init(self: SimulatorClient) -> None:
        self.server_calls: Counter[str] = Counter()
        self.settings: dict[str, Any] = {}
        self.presence: str | None = None

    # ---- the simulated server's state ----

    async def _world(self: SimulatorClient) -> dict[str, Any]:
        dev = await self._load()
        world = dev.setdefault("people", {})  # the cached device dict: one world per client
        world.setdefault("contacts", {})
        world.setdefault("groups", {})
        return world

    async def _save_world(self: SimulatorClient, world: dict[str, Any]) -> None:
        await self._save(people=world)

    async def _call(self: SimulatorClient, name: str) -> str:
        """One request to the simulated server: counted; needs a live session. Returns the
        account's own JID."""
        if not self.connected or self.stalled:
            raise NotConnected("simulated client is not connected")
        self.server_calls[name] += 1
        return (await self._load())["jid"]

    def _on_whatsapp(self, world: dict[str, Any], jid: str) -> bool:
        if jid in world["contacts"]:
            return True
        return any(jid in g["participants"] for g in world["groups"].values())

    # ---- settings and presence ----

    async def configure(self: SimulatorClient, settings: dict) -> None:
        self.settings = dict(settings)
        if self.connected:
            await self._presence()

    async def _presence(self: SimulatorClient) -> None:
        want = "available" if self.settings.get("mark_online") else None
        if want is None and self.presence == "available":
            want = "unavailable"
        if want is not None and want != self.presence:
            self.server_calls["presence"] += 1
            self.presence = want

    def _people_connected(self: SimulatorClient) -> None:
        self.presence = None  # a new session starts without a presence
        if self.settings.get("mark_online"):
            self.server_calls["presence"] += 1
            self.presence = "available"

    # ---- people ----

    async def lookup(self: SimulatorClient, phones: list[str]) -> list[m.LookupResult]:
        await self._call("lookup")
        world = await self._world()
        out = []
        for phone in phones:
            jid = phone_jid(phone)
            if self._on_whatsapp(world, jid):
                name = world["contacts"].get(jid, {}).get("business_name")
                out.append(m.LookupResult(phone, True, jid, lid_of(jid), name))
            else:
                out.append(m.LookupResult(phone, False))
        return out

    async def identity(self: SimulatorClient, jid: str) -> str | None:
        """The other form of `jid` from the device's LID map (local: no server call)."""
        if not self.connected:
            raise NotConnected("simulated client is not connected")
        learned = (await self._load()).get("lid_map") or {}
        return learned.get(jid)

    async def address_book(self: SimulatorClient) -> list[m.ContactName]:
        if not self.connected:
            raise NotConnected("simulated client is not connected")
        world = await self._world()
        return [
            m.ContactName(jid, c["name"], c["name"].split()[0], c.get("business_name"))
            for jid, c in world["contacts"].items()
            if c.get("name")
        ]

    async def user_info(self: SimulatorClient, jid: str) -> dict[str, Any]:
        await self._call("user_info")
        world = await self._world()
        jid = phone_jid(jid)
        c = world["contacts"].get(jid)
        if c is None:
            return {"jid": jid, "lid": None, "status": None, "business_name": None}
        return {
            "jid": jid,
            "lid": lid_of(jid),
            "status": c.get("status"),
            "business_name": c.get("business_name"),
        }

    async def picture(self: SimulatorClient, jid: str, known_id: str | None) -> m.Picture | None:
        await self._call("picture")
        world = await self._world()
        c = world["contacts"].get(phone_jid(jid))
        if c is None or not c.get("picture"):
            return None
        pid = str(c["picture"])
        if pid == known_id:
            return m.Picture(pid)
        return m.Picture(pid, _picture_png(jid), "image/png")

    # ---- groups ----

    def _group(self, g: dict[str, Any], jid: str) -> m.Group:
        return m.Group(
            jid=jid,
            subject=g.get("subject"),
            description=g.get("description"),
            owner=g.get("owner"),
            created_at_ms=g.get("created_at_ms"),
            announce=bool(g.get("announce")),
            locked=bool(g.get("locked")),
            participants=tuple(
                m.Participant(p, lid_of(p), p, role) for p, role in g["participants"].items()
            ),
        )

    async def groups(self: SimulatorClient) -> list[m.Group]:
        own = await self._call("groups")
        world = await self._world()
        return [
            self._group(g, jid) for jid, g in world["groups"].items() if own in g["participants"]
        ]

    async def _member_group(self: SimulatorClient, jid: str, own: str) -> dict[str, Any]:
        g = (await self._world())["groups"].get(jid)
        if g is None or own not in g["participants"]:
            raise NotFound(f"{jid}: no such group, or this account is not in it")
        return g

    async def group(self: SimulatorClient, jid: str) -> m.Group:
        own = await self._call("group_info")
        return self._group(await self._member_group(jid, own), jid)

    async def create_group(self: SimulatorClient, subject: str, participants: list[str]) -> m.Group:
        own = await self._call("create_group")
        world = await self._world()
        jid = f"1203630{secrets.randbelow(10**11):011d}@g.us"
        g = {
            "subject": subject,
            "description": None,
            "owner": own,
            "created_at_ms": self.engine.clock.now_ms(),
            "participants": {own: "superadmin"},
        }
        refused = []
        for p in participants:
            pj = phone_jid(p)
            if self._on_whatsapp(world, pj):
                g["participants"][pj] = "member"
            else:
                refused.append(m.Participant(pj, None, pj, "member", 404))
        world["groups"][jid] = g
        await self._save_world(world)
        group = self._group(g, jid)
        self._deliver(m.GroupJoined(group))
        return dataclasses.replace(group, participants=group.participants + tuple(refused))

    async def update_participants(
        self: SimulatorClient, jid: str, action: str, participants: list[str]
    ) -> list[m.Participant]:
        own = await self._call("update_participants")
        world = await self._world()
        g = await self._member_group(jid, own)
        if g["participants"].get(own) not in ("admin", "superadmin"):
            raise Refused("only group admins can change participants")
        members: dict[str, str] = g["participants"]
        out, changed = [], []
        for p in participants:
            pj = phone_jid(p)
            error = None
            if action == "add":
                if pj in members:
                    error = 409
                elif not self._on_whatsapp(world, pj):
                    error = 404
                else:
                    members[pj] = "member"
            elif pj not in members:
                error = 404
            elif members[pj] == "superadmin" and pj != own:
                error = 403  # nobody removes or demotes the group's creator
            elif action == "remove":
                del members[pj]
            else:
                members[pj] = "admin" if action == "promote" else "member"
            role = members.get(pj, "member")
            out.append(m.Participant(pj, lid_of(pj), pj, role, error))
            if error is None:
                changed.append(pj)
        await self._save_world(world)
        if changed:
            key = {"add": "join", "remove": "leave"}.get(action, action)
            now = self.engine.clock.now_ms()
            self._deliver(m.GroupChanged(jid, by=own, at_ms=now, **{key: tuple(changed)}))
        return out

    async def invite_link(self: SimulatorClient, jid: str, reset: bool) -> str:
        own = await self._call("invite_link")
        world = await self._world()
        g = await self._member_group(jid, own)
        if g["participants"].get(own) not in ("admin", "superadmin"):
            raise Refused("only group admins can see or reset the invite link")
        if reset or not g.get("invite"):
            g["invite"] = "".join(secrets.choice(_ALNUM) for _ in range(22))
            await self._save_world(world)
        return INVITE_PREFIX + g["invite"]

    async def join_group(self: SimulatorClient, code: str) -> str:
        own = await self._call("join_group")
        world = await self._world()
        for jid, g in world["groups"].items():
            if g.get("invite") and g["invite"] == code:
                if own not in g["participants"]:
                    g["participants"][own] = "member"
                    await self._save_world(world)
                    self._deliver(m.GroupJoined(self._group(g, jid)))
                return jid
        raise NotFound("the invite link is invalid or was reset")

    async def leave_group(self: SimulatorClient, jid: str) -> None:
        own = await self._call("leave_group")
        world = await self._world()
        await self._member_group(jid, own)
        del world["groups"][jid]["participants"][own]
        await self._save_world(world)
        now = self.engine.clock.now_ms()
        self._deliver(m.GroupChanged(jid, by=own, at_ms=now, leave=(own,)))

    # ---- simulate actions ----

    async def _a_contacts(self: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
        phones = field(a, "phones", list, required=True)
        names = field(a, "names", dict, default={})
        pictures = field(a, "pictures", bool, default=True)
        if len(phones) > MAX_PHONES or not all(isinstance(p, str) and p for p in phones):
            raise SimulationError(f"phones: must be a list of at most {MAX_PHONES} numbers")
        if not all(isinstance(v, str) for v in names.values()):
            raise SimulationError("names: must map numbers to saved names")
        world = await self._world()
        out, events = [], []
        for p in phones:
            jid = phone_jid(p)
            c = world["contacts"].setdefault(jid, {})
            c["picture"] = (c.get("picture") or 0) + 1 if pictures else None
            out.append({"phone": p, "jid": jid, "lid": lid_of(jid)})
            name = names.get(p) or names.get(jid)
            if name:
                c["name"] = name
                events.append(m.ContactName(jid, full_name=name, first_name=name.split()[0]))
        await self._save_world(world)
        for ev in events:
            self._deliver(ev)  # saved names arrive through app state sync
        return {"contacts": out}

    async def _a_group(self: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
        jid = field(a, "jid", str, required=True)
        jid = jid if "@" in jid else f"{jid}@g.us"
        subject = field(a, "subject", str, required=True)
        participants = field(a, "participants", list, required=True)
        description = field(a, "description", str)
        admin = field(a, "admin", bool, default=True)
        if not jid.endswith("@g.us"):
            raise SimulationError("jid: must be a group JID (...@g.us)")
        if not all(isinstance(p, str) and p for p in participants):
            raise SimulationError("participants: must be a list of numbers or JIDs")
        own = (await self._load())["jid"]
        world = await self._world()
        old = world["groups"].get(jid)
        members = {phone_jid(p): "member" for p in participants if phone_jid(p) != own}
        members[own] = "admin" if admin else "member"
        now = self.engine.clock.now_ms()
        g = {
            "subject": subject,
            "description": description,
            "owner": (old or {}).get("owner") or next(iter(members)),
            "created_at_ms": (old or {}).get("created_at_ms") or now,
            "participants": members,
            "invite": (old or {}).get("invite"),
        }
        world["groups"][jid] = g
        await self._save_world(world)
        if old is None or own not in old["participants"]:
            self._deliver(m.GroupJoined(self._group(g, jid)))
        else:
            before = old["participants"]
            self._deliver(
                m.GroupChanged(
                    jid,
                    at_ms=now,
                    subject=subject if subject != old.get("subject") else None,
                    description=description if description != old.get("description") else None,
                    join=tuple(p for p in members if p not in before),
                    leave=tuple(p for p in before if p not in members),
                )
            )
        return {"jid": jid, "participants": len(members)}

    async def _a_call(self: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
        caller = phone_jid(field(a, "from", str, required=True))
        video = field(a, "video", bool, default=False)
        self._require_connected()
        call_id = secrets.token_hex(16).upper()
        rejected = bool(self.settings.get("reject_calls"))
        if rejected:
            self.server_calls["reject_call"] += 1
            self._deliver(m.CallRejected(call_id, caller, self.engine.clock.now_ms(), video))
        return {"call_id": call_id, "rejected": rejected}

    async def _a_server(self: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
        return {"calls": dict(self.server_calls), "presence": self.presence}

    async def _a_learn(self: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
        """The device learned a LID <-> phone mapping (as whatsmeow does from a message,
        a usync answer or history sync): it goes to the device's LID map and is reported."""
        phone = phone_jid(field(a, "phone", str, required=True))
        lid = field(a, "lid", str) or lid_of(phone)
        if not lid.endswith("@lid"):
            raise SimulationError("lid: must be a LID (...@lid)")
        lid_map = dict((await self._load()).get("lid_map") or {})
        lid_map[lid], lid_map[phone] = phone, lid
        await self._save(lid_map=lid_map)
        self._deliver(m.IdentityLearned(lid, phone))
        return {"lid": lid, "phone": phone}


PEOPLE_ACTIONS = {
    "contacts": ({"phones", "names", "pictures"}, PeopleMixin._a_contacts),
    "group": ({"jid", "subject", "participants", "description", "admin"}, PeopleMixin._a_group),
    "call": ({"from", "video"}, PeopleMixin._a_call),
    "server": (set(), PeopleMixin._a_server),
    "identity": ({"phone", "lid"}, PeopleMixin._a_learn),
}
