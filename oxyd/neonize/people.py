"""People and groups on the neonize engine: translation of whatsmeow's answers and events into
oxyd's model, and the Client methods that call them (mixed into NeonizeClient).

Every call checks that the session runs and holds the gate's shared side (neonize-notes hazard
1 and 4: some calls crash the process on a client that is not running). Participants and
lookups use the phone JID as `jid` where whatsmeow knows it, the LID beside it, as messages do.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.request
from collections.abc import Iterable
from typing import Any

from oxyd import model as m
from oxyd.engine import EngineError, NotConnected, NotFound, Refused
from oxyd.neonize.jids import jid_str, parse_jid, to_ms

log = logging.getLogger("oxyd.neonize")

# Events this module translates (registered by NeonizeClient with the others).
EVENT_NAMES = ("JoinedGroup", "GroupInfo", "CallOffer")
PICTURE_MAX_BYTES = 5 * 1024 * 1024
PICTURE_TIMEOUT_S = 20.0
# Only WhatsApp's own CDN: the URL comes from the server, but a picture fetch must never be
# a way to make the daemon open an arbitrary address.
PICTURE_HOSTS = (".whatsapp.net", ".fbcdn.net")
_SEEN_MAX = 10_000


# ---- pure translation (tested on hand-built protobufs) ----


def jid_proto(text: str) -> Any:
    from neonize.proto import Neonize_pb2 as npb

    user, _, server = text.partition("@")
    return npb.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def lookup_results(phones: list[str], responses: Iterable[Any]) -> list[m.LookupResult]:
    """IsOnWhatsAppResponse (Query is the "+digits" asked) in the order of `phones`."""
    by_query = {r.Query.lstrip("+"): r for r in responses}
    out = []
    for phone in phones:
        r = by_query.get(phone)
        if r is None or not r.IsIn:
            out.append(m.LookupResult(phone, False))
            continue
        name = r.VerifiedName.Details.verifiedName if r.HasField("VerifiedName") else None
        out.append(m.LookupResult(phone, True, jid_str(r.JID), None, name or None))
    return out


def participant(p: Any) -> m.Participant:
    raw, lid, phone = jid_str(p.JID), jid_str(p.LID), jid_str(p.PhoneNumber)
    if raw and raw.endswith("@lid"):
        lid = lid or raw
    elif raw and raw.endswith("@s.whatsapp.net"):
        phone = phone or raw
    role = "superadmin" if p.IsSuperAdmin else "admin" if p.IsAdmin else "member"
    return m.Participant(phone or raw or "", lid, phone, role, int(p.Error) or None)


def group(info: Any) -> m.Group:
    owner = jid_str(info.OwnerPN) or jid_str(info.OwnerJID)
    return m.Group(
        jid=jid_str(info.JID) or "",
        subject=info.GroupName.Name or None,
        description=info.GroupTopic.Topic or None,
        owner=owner,
        created_at_ms=to_ms(info.GroupCreated) or None,
        announce=bool(info.GroupAnnounce.IsAnnounce),
        locked=bool(info.GroupLocked.isLocked),
        participants=tuple(participant(p) for p in info.Participants),
    )


def group_changed(ev: Any) -> m.GroupChanged:
    """A GroupInfoEvent (name, topic, settings, joins/leaves/promotions) as one change."""
    topic = None
    if ev.HasField("Topic"):
        topic = "" if ev.Topic.TopicDeleted else ev.Topic.Topic
    return m.GroupChanged(
        jid=jid_str(ev.JID) or "",
        by=jid_str(ev.Sender),
        at_ms=to_ms(ev.Timestamp),
        subject=ev.Name.Name if ev.HasField("Name") else None,
        description=topic,
        announce=bool(ev.Announce.IsAnnounce) if ev.HasField("Announce") else None,
        locked=bool(ev.Locked.isLocked) if ev.HasField("Locked") else None,
        join=_jids(ev.Join),
        leave=_jids(ev.Leave),
        promote=_jids(ev.Promote),
        demote=_jids(ev.Demote),
    )


def _jids(items: Iterable[Any]) -> tuple[str, ...]:
    return tuple(j for j in (jid_str(x) for x in items) if j)


def call_offer(ev: Any) -> tuple[str, Any, str, int] | None:
    """(call id, caller JID proto as delivered, caller as phone JID where known, at_ms)."""
    meta = ev.basicCallMeta
    if not meta.callID:
        return None
    creator = meta.callCreator if meta.callCreator.Server else getattr(meta, "from")
    caller = jid_str(creator) or ""
    alt = jid_str(meta.callCreatorAlt)
    if caller.endswith("@lid") and alt and alt.endswith("@s.whatsapp.net"):
        caller = alt
    return meta.callID, creator, caller, to_ms(meta.timestamp)


def contact_names(contacts: Iterable[Any]) -> list[m.ContactName]:
    """The device's contact store (app state: saved names; business names) as ContactName."""
    out = []
    for c in contacts:
        jid, info = jid_str(c.JID), c.Info
        if jid and (info.FullName or info.FirstName or info.BusinessName):
            out.append(
                m.ContactName(
                    jid, info.FullName or None, info.FirstName or None, info.BusinessName or None
                )
            )
    return out


def business_name(ev: Any) -> str | None:
    """The verified business name a message event carries, if any."""
    info = ev.Info
    if not info.HasField("VerifiedName"):
        return None
    return info.VerifiedName.Details.verifiedName or None


def identities(msg: m.Message) -> list[m.IdentityLearned]:
    """LID <-> phone pairs a translated message carries (whatsmeow's SenderAlt/RecipientAlt)."""
    out = []
    for a, b in ((msg.sender, msg.sender_alt), (msg.chat, msg.chat_alt)):
        if a and b:
            lid, phone = (a, b) if a.endswith("@lid") else (b, a)
            if lid.endswith("@lid") and phone.endswith("@s.whatsapp.net"):
                out.append(m.IdentityLearned(lid, phone))
    return out


_STATUS_RE = re.compile(r"\b(40[0-9]|41[0-9])\b")
# whatsmeow's own error sentences for refusals that carry no status code.
_REFUSALS = (
    ("not found", 404),
    ("not participating", 404),
    ("not a participant", 404),
    ("invite link", 404),
    ("not an admin", 403),
    ("not-authorized", 403),
    ("forbidden", 403),
)


def refusal_status(text: str) -> int | None:
    """WhatsApp's status in a whatsmeow error ("info query returned status 403: ..."), or
    the one its known sentences imply; None for other failures (network, timeouts)."""
    found = _STATUS_RE.search(text)
    if found:
        code = int(found.group(1))
        return 404 if code == 410 else code
    lowered = text.lower()
    for needle, code in _REFUSALS:
        if needle in lowered:
            return code
    return None


def picture_url_allowed(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts.scheme == "https" and host.endswith(PICTURE_HOSTS)


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=PICTURE_TIMEOUT_S) as r:
        data = r.read(PICTURE_MAX_BYTES + 1)
    if len(data) > PICTURE_MAX_BYTES:
        raise EngineError("profile picture larger than 5 MiB")
    return data


# ---- Client methods ----


class PeopleMixin:
    """Mixed into NeonizeClient: uses its `_nc`, `engine.gate`, `running`, `_emit`."""

    settings: dict[str, Any]

    def _people_init(self) -> None:
        self._seen_lids: set[str] = set()
        self._seen_names: set[tuple[str, str]] = set()
        self._online = False  # "available" was sent in this session
        self._tasks: set[asyncio.Task] = set()

    async def _live(self, fn, *args: Any) -> Any:
        """Call `fn(*args)` on the running session, holding the gate's shared side."""
        if not self.running:
            raise NotConnected("not connected")

        async def call() -> Any:
            if not self.running or not await self._nc.is_logged_in:
                raise NotConnected("not connected")
            return await fn(*args)

        # Gate.run: a caller that gives up (timeout) never frees the gate under a live Go call.
        return await self.engine.gate.run(call, exclusive=False)

    async def _whatsapp(self, what: str, fn, *args: Any) -> Any:
        """A request to WhatsApp; its refusals become Refused with WhatsApp's code."""
        try:
            return await self._live(fn, *args)
        except EngineError:
            raise
        except Exception as e:
            status = refusal_status(str(e))
            if status is not None:
                cls = NotFound if status == 404 else Refused
                raise cls(f"{what}: {e}", status) from e
            raise EngineError(f"{what} failed: {e}") from e

    async def _presence(self) -> None:
        """Available while `mark_online`; unavailable once, when it was turned off."""
        from neonize.utils.enum import Presence

        online = bool(self.settings.get("mark_online"))
        if not online and not self._online:
            return
        try:
            await self._live(
                self._nc.send_presence, Presence.AVAILABLE if online else Presence.UNAVAILABLE
            )
            self._online = online
        except Exception as e:
            log.warning("neonize %s: presence not sent: %s", self.tenant_id, e)

    def _people_event(self, name: str, ev: Any) -> list[m.Event]:
        if name == "JoinedGroup":
            return [m.GroupJoined(group(ev.GroupInfo))]
        if name == "GroupInfo":
            return [group_changed(ev)]
        if name == "CallOffer" and self.settings.get("reject_calls"):
            offer = call_offer(ev)
            if offer is not None:
                self._spawn(self._reject(*offer))
        return []

    def _people_connected(self) -> None:
        self._online = False  # a new session starts with no presence sent
        if self.settings.get("mark_online"):
            self._spawn(self._presence())

    def _people_message(self, msg: m.Message, ev: Any) -> None:
        name = business_name(ev)
        if name and not msg.from_me and (msg.sender, name) not in self._seen_names:
            if len(self._seen_names) > _SEEN_MAX:
                self._seen_names.clear()
            self._seen_names.add((msg.sender, name))
            self._emit(m.ContactName(msg.sender, business_name=name))
        for ident in identities(msg):
            if ident.lid not in self._seen_lids:
                if len(self._seen_lids) > _SEEN_MAX:
                    self._seen_lids.clear()
                self._seen_lids.add(ident.lid)
                self._emit(ident)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reject(self, call_id: str, creator: Any, caller: str, at_ms: int) -> None:
        try:
            await self._live(self._nc.reject_call, creator, call_id)
        except Exception as e:
            log.warning("neonize %s: could not reject call %s: %s", self.tenant_id, call_id, e)
            return
        self._emit(m.CallRejected(call_id, caller, at_ms or self.engine.clock.now_ms()))

    async def lookup(self, phones: list[str]) -> list[m.LookupResult]:
        responses = await self._whatsapp(
            "lookup", self._nc.is_on_whatsapp, *[f"+{p}" for p in phones]
        )
        results = lookup_results(phones, responses)
        out = []
        for r in results:  # the usync answer taught whatsmeow the LID: read it from its map
            lid = await self.identity(r.jid) if r.jid else None
            out.append(m.LookupResult(r.phone, r.on_whatsapp, r.jid, lid, r.business_name))
        return out

    async def identity(self, jid: str) -> str | None:
        get = self._nc.get_pn_from_lid if jid.endswith("@lid") else self._nc.get_lid_from_pn
        try:
            found = await self._live(get, jid_proto(jid))
        except NotConnected:
            raise
        except Exception:
            return None  # not in the map
        return parse_jid(jid_str(found) or "") if found is not None else None

    async def address_book(self) -> list[m.ContactName]:
        contacts = await self._live(self._nc.contact.get_all_contacts)
        return contact_names(contacts)

    async def user_info(self, jid: str) -> dict[str, Any]:
        infos = await self._whatsapp("user info", self._nc.get_user_info, jid_proto(jid))
        for item in infos:
            info = item.UserInfo
            name = info.VerifiedName.Details.verifiedName if info.HasField("VerifiedName") else None
            return {
                "jid": jid_str(item.JID) or jid,
                "lid": await self.identity(jid) if jid.endswith("@s.whatsapp.net") else None,
                "status": info.Status or None,
                "business_name": name or None,
            }
        return {"jid": jid, "lid": None, "status": None, "business_name": None}

    async def picture(self, jid: str, known_id: str | None) -> m.Picture | None:
        from neonize.proto import Neonize_pb2 as npb

        params = npb.GetProfilePictureParams(Preview=False, ExistingID=known_id or "")
        try:
            info = await self._whatsapp(
                "profile picture", self._nc.get_profile_picture, jid_proto(jid), params
            )
        except Refused as e:
            if e.status in (401, 404):  # no picture, or hidden from us by privacy settings
                return None
            raise
        if info is None or not info.ID:
            return None if not known_id else m.Picture(known_id)
        if not info.URL:
            return m.Picture(info.ID)  # unchanged: ExistingID matched
        if not picture_url_allowed(info.URL):
            raise EngineError("profile picture URL is not on WhatsApp's CDN")
        data = await asyncio.to_thread(_download, info.URL)
        return m.Picture(info.ID, data, "image/jpeg")

    async def groups(self) -> list[m.Group]:
        found = await self._whatsapp("groups", self._nc.get_joined_groups)
        return [group(g) for g in found]

    async def group(self, jid: str) -> m.Group:
        return group(await self._whatsapp("group info", self._nc.get_group_info, jid_proto(jid)))

    async def create_group(self, subject: str, participants: list[str]) -> m.Group:
        info = await self._whatsapp(
            "create group",
            self._nc.create_group,
            subject,
            [jid_proto(p) for p in participants],
        )
        return group(info)

    async def update_participants(
        self, jid: str, action: str, participants: list[str]
    ) -> list[m.Participant]:
        from neonize.utils.enum import ParticipantChange

        changed = await self._whatsapp(
            f"{action} participants",
            self._nc.update_group_participants,
            jid_proto(jid),
            [jid_proto(p) for p in participants],
            ParticipantChange(action),
        )
        return [participant(p) for p in changed]

    async def invite_link(self, jid: str, reset: bool) -> str:
        return await self._whatsapp(
            "invite link", self._nc.get_group_invite_link, jid_proto(jid), reset
        )

    async def join_group(self, code: str) -> str:
        found = await self._whatsapp("join group", self._nc.join_group_with_link, code)
        return jid_str(found) or ""

    async def leave_group(self, jid: str) -> None:
        await self._whatsapp("leave group", self._nc.leave_group, jid_proto(jid))
