"""People and groups on the neonize engine, offline: whatsmeow's answers and events as real
neonize protobufs, translated; events through neonize's own dispatch from a foreign thread;
every call refused (not crashed) on a client that is not running."""

from __future__ import annotations

import threading
import uuid

import pytest
from helpers import until
from test_neonize_engine import feed

from oxyd import model as m
from oxyd.engine import NotConnected
from oxyd.neonize import people as p
from oxyd.neonize.engine import NeonizeEngine, import_neonize

import_neonize()
npb = pytest.importorskip("neonize.proto.Neonize_pb2")
e2e = pytest.importorskip("neonize.proto.waE2E.WAWebProtobufsE2E_pb2")

ANN = "4915111111111@s.whatsapp.net"
ANN_LID = "123456789012345@lid"
BOB = "4915222222222@s.whatsapp.net"
BOB_LID = "223456789012345@lid"
GROUP = "120363000000000001@g.us"


@pytest.fixture(autouse=True)
def neonize_loop_reset():
    from neonize.aioze import events

    events.event_global_loop = None
    yield
    events.event_global_loop = None


def jid(text: str | None):
    if not text:
        return npb.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)
    user, server = text.split("@")
    return npb.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def gp(j, lid=None, phone=None, admin=False, superadmin=False, error=0):
    return npb.GroupParticipant(
        JID=jid(j),
        LID=jid(lid),
        PhoneNumber=jid(phone),
        IsAdmin=admin,
        IsSuperAdmin=superadmin,
        DisplayName="",
        Error=error,
    )


def group_info():
    return npb.GroupInfo(
        JID=jid(GROUP),
        OwnerJID=jid(ANN_LID),
        OwnerPN=jid(ANN),
        GroupName=npb.GroupName(Name="Team", NameSetAt=1_700_000_000),
        GroupTopic=npb.GroupTopic(Topic="About us", TopicID="t1"),
        GroupLocked=npb.GroupLocked(isLocked=True),
        GroupAnnounce=npb.GroupAnnounce(IsAnnounce=False),
        GroupCreated=1_700_000_000,
        ParticipantVersionID="v1",
        Participants=[
            # a LID-addressed group: JID is the LID, the phone beside it
            gp(ANN_LID, lid=ANN_LID, phone=ANN, admin=True, superadmin=True),
            gp(BOB_LID, lid=BOB_LID, phone=BOB),
        ],
    )


def test_group_info_translation():
    g = p.group(group_info())
    assert g.jid == GROUP and g.subject == "Team" and g.description == "About us"
    assert g.owner == ANN and g.created_at_ms == 1_700_000_000_000
    assert g.locked is True and g.announce is False
    assert g.participants == (
        m.Participant(ANN, ANN_LID, ANN, "superadmin"),
        m.Participant(BOB, BOB_LID, BOB, "member"),
    )
    # a phone-addressed participant with no LID known, and one WhatsApp refused (403)
    assert p.participant(gp(BOB)) == m.Participant(BOB, None, BOB, "member")
    assert p.participant(gp(BOB, error=403)).error == 403


def test_lookup_results_in_the_order_asked():
    responses = [
        npb.IsOnWhatsAppResponse(Query="+4915222222222", JID=jid(BOB), IsIn=True),
        npb.IsOnWhatsAppResponse(Query="+4915111111111", JID=jid(ANN), IsIn=False),
    ]
    got = p.lookup_results(["4915111111111", "4915222222222", "4915333333333"], responses)
    assert got == [
        m.LookupResult("4915111111111", False),
        m.LookupResult("4915222222222", True, BOB),
        m.LookupResult("4915333333333", False),
    ]


def test_group_event_translation():
    ev = npb.GroupInfoEvent(
        JID=jid(GROUP),
        Sender=jid(ANN),
        Timestamp=1_700_000_100,
        Name=npb.GroupName(Name="New name"),
        Join=[jid(BOB)],
        Promote=[jid(BOB_LID)],
    )
    assert p.group_changed(ev) == m.GroupChanged(
        GROUP,
        by=ANN,
        at_ms=1_700_000_100_000,
        subject="New name",
        join=(BOB,),
        promote=(BOB_LID,),
    )
    deleted = npb.GroupInfoEvent(JID=jid(GROUP), Topic=npb.GroupTopic(TopicDeleted=True))
    assert p.group_changed(deleted).description == ""


def test_call_offer_and_identities():
    meta = npb.BasicCallMeta(
        callCreator=jid(ANN_LID), callCreatorAlt=jid(ANN), callID="C1", timestamp=1_700_000_000
    )
    call_id, creator, caller, at_ms = p.call_offer(npb.CallOffer(basicCallMeta=meta))
    assert (call_id, caller, at_ms) == ("C1", ANN, 1_700_000_000_000)
    assert creator.Server == "lid"  # rejected with the JID exactly as delivered
    assert p.call_offer(npb.CallOffer()) is None
    msg = m.Message("M1", ANN, ANN, False, 1, sender_alt=ANN_LID, chat_alt=ANN_LID)
    assert p.identities(msg) == [m.IdentityLearned(ANN_LID, ANN)] * 2
    assert p.identities(m.Message("M2", GROUP, ANN, False, 1)) == []


def test_address_book_and_business_names():
    contacts = [
        npb.Contact(
            JID=jid(ANN), Info=npb.ContactInfo(Found=True, FirstName="Ann", FullName="Ann Lee")
        ),
        npb.Contact(JID=jid(BOB), Info=npb.ContactInfo(Found=True, PushName="bob")),  # no names
        npb.Contact(JID=jid(BOB_LID), Info=npb.ContactInfo(Found=True, BusinessName="Bob's")),
    ]
    assert p.contact_names(contacts) == [
        m.ContactName(ANN, "Ann Lee", "Ann", None),
        m.ContactName(BOB_LID, None, None, "Bob's"),
    ]
    ev = npb.Message(Info=npb.MessageInfo(ID="M1"))
    ev.Info.VerifiedName.Details.verifiedName = "Shop Ltd"
    assert p.business_name(ev) == "Shop Ltd"
    assert p.business_name(npb.Message(Info=npb.MessageInfo(ID="M2"))) is None


def test_refusals_and_picture_urls():
    assert p.refusal_status("info query returned status 403: forbidden") == 403
    assert p.refusal_status("failed: status 410 gone") == 404
    assert p.refusal_status("group not found") == 404
    assert p.refusal_status("websocket closed") is None
    assert p.picture_url_allowed("https://pps.whatsapp.net/v/t61/x.jpg?oh=1")
    assert not p.picture_url_allowed("http://pps.whatsapp.net/x.jpg")
    assert not p.picture_url_allowed("https://127.0.0.1/x.jpg")
    assert not p.picture_url_allowed("https://whatsapp.net.evil.example/x.jpg")


async def test_calls_on_a_client_that_is_not_running_are_refused(tmp_path):
    engine = NeonizeEngine(tmp_path)
    client = engine.client(f"t{uuid.uuid4().hex[:10]}", lambda ev: None)
    client.native()  # a real NewAClient that never connected: Go would crash on most calls
    calls = [
        client.lookup(["4915111111111"]),
        client.address_book(),
        client.identity(ANN),
        client.user_info(ANN),
        client.picture(ANN, None),
        client.groups(),
        client.group(GROUP),
        client.create_group("x", [ANN]),
        client.update_participants(GROUP, "add", [ANN]),
        client.invite_link(GROUP, False),
        client.join_group("AbCdEfGhIjKl"),
        client.leave_group(GROUP),
    ]
    for coro in calls:
        with pytest.raises(NotConnected):
            await coro
    await client.configure({"mark_online": True, "reject_calls": True})  # no session: no call
    assert await engine.close()


async def test_group_and_call_events_through_neonize_dispatch(tmp_path):
    got: list[m.Event] = []
    engine = NeonizeEngine(tmp_path)
    await engine.start()
    client = engine.client(f"t{uuid.uuid4().hex[:10]}", got.append)
    nc = client.native()
    src = npb.MessageSource(
        Chat=jid(ANN_LID), Sender=jid(ANN_LID), SenderAlt=jid(ANN), IsFromMe=False, IsGroup=False
    )
    info = npb.MessageInfo(ID="M1", Timestamp=1_700_000_000_000, MessageSource=src)
    events = [
        npb.JoinedGroup(Reason="create", GroupInfo=group_info()),
        npb.GroupInfoEvent(JID=jid(GROUP), Leave=[jid(BOB)], Timestamp=1_700_000_200),
        # reject_calls is off: an offer is not declined and reports nothing
        npb.CallOffer(basicCallMeta=npb.BasicCallMeta(callCreator=jid(ANN), callID="C1")),
        npb.Message(Info=info, Message=e2e.Message(conversation="hi")),
        npb.Message(Info=info, Message=e2e.Message(conversation="again")),
    ]
    done = threading.Event()
    threading.Thread(target=feed, args=(nc, events, done), daemon=True).start()
    await until(lambda: len(got) >= 5, 20, "translated events")
    assert isinstance(got[0], m.GroupJoined) and got[0].group.subject == "Team"
    assert got[1] == m.GroupChanged(GROUP, at_ms=1_700_000_200_000, leave=(BOB,))
    # the mapping goes first, so the writer has it when it stores the message
    assert got[2] == m.IdentityLearned(ANN_LID, ANN)
    assert isinstance(got[3], m.Message) and got[3].sender == ANN
    assert isinstance(got[4], m.Message) and len(got) == 5  # learned once, not per message
    assert not any(isinstance(e, m.CallRejected) for e in got)
    assert await engine.close()


def test_people_values_cross_the_engine_host_pipe():
    from oxyd.engine import NotFound, Refused
    from oxyd.neonize import wire

    g = p.group(group_info())
    assert wire.unpack(wire.pack(g)) == g  # nested Participant tuple included
    results = [m.LookupResult("4915111111111", True, ANN, ANN_LID), m.Picture("id", b"\xff")]
    assert wire.unpack(wire.pack(results)) == results
    err = wire.exception("NotFound", "no such group")
    assert isinstance(err, NotFound) and err.status == 404
    assert wire.exception("Refused", "not an admin").status == 403
    assert isinstance(err, Refused)
