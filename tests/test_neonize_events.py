"""Translation of hand-built neonize protobufs into oxyd events (no network, no neonize calls)."""

from __future__ import annotations

import pytest

from oxyd import model
from oxyd.neonize import events as tr
from oxyd.neonize.engine import import_neonize

import_neonize()  # before anything else touches neonize (see its docstring)
npb = pytest.importorskip("neonize.proto.Neonize_pb2")
e2e = pytest.importorskip("neonize.proto.waE2E.WAWebProtobufsE2E_pb2")
hs = pytest.importorskip("neonize.proto.waHistorySync.WAWebProtobufsHistorySync_pb2")
web = pytest.importorskip("neonize.proto.waWeb.WAWebProtobufsWeb_pb2")
common = pytest.importorskip("neonize.proto.waCommon.WACommon_pb2")

ANN = "4915111111111@s.whatsapp.net"
ME = "4915999999999@s.whatsapp.net"
ANN_LID = "123456789012345@lid"
GROUP = "120363000000000001@g.us"
TS_MS = 1_700_000_000_123


@pytest.fixture(autouse=True)
def neonize_loop_reset():
    from neonize.aioze import events

    events.event_global_loop = None
    yield
    events.event_global_loop = None


def jid(text: str | None, device: int = 0):
    if not text:
        return npb.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)
    user, server = text.split("@")
    return npb.JID(User=user, Server=server, RawAgent=0, Device=device, Integrator=0)


def message_ev(
    body,
    *,
    wa_id="M1",
    chat=ANN,
    sender=ANN,
    from_me=False,
    group=False,
    sender_alt=None,
    recipient_alt=None,
    ts=TS_MS,
    push="Ann",
    is_edit=False,
):
    src = npb.MessageSource(
        Chat=jid(chat),
        Sender=jid(sender, device=3),
        IsFromMe=from_me,
        IsGroup=group,
        SenderAlt=jid(sender_alt),
        RecipientAlt=jid(recipient_alt),
    )
    info = npb.MessageInfo(
        ID=wa_id, Timestamp=ts, MessageSource=src, Pushname=push, Edit="1" if is_edit else ""
    )
    return npb.Message(Info=info, Message=body, IsEdit=is_edit)


def key(wa_id="ORIG", remote=ANN, from_me=False):
    return common.MessageKey(remoteJID=remote, fromMe=from_me, ID=wa_id)


SHA = b"\x01\x02" * 16

KINDS = [
    (e2e.Message(conversation="hi"), "text", "hi", None),
    (
        e2e.Message(extendedTextMessage=e2e.ExtendedTextMessage(text="see https://x.y")),
        "text",
        "see https://x.y",
        None,
    ),
    (
        e2e.Message(
            imageMessage=e2e.ImageMessage(
                caption="cat",
                mimetype="image/jpeg",
                fileLength=2048,
                width=640,
                height=480,
                fileSHA256=SHA,
            )
        ),
        "image",
        "cat",
        model.Media(
            mime="image/jpeg",
            size_bytes=2048,
            sha256=SHA.hex(),
            width=640,
            height=480,
            caption="cat",
        ),
    ),
    (
        e2e.Message(
            videoMessage=e2e.VideoMessage(
                caption="clip", mimetype="video/mp4", seconds=12, fileLength=9000
            )
        ),
        "video",
        "clip",
        model.Media(mime="video/mp4", size_bytes=9000, duration_s=12, caption="clip"),
    ),
    (
        e2e.Message(audioMessage=e2e.AudioMessage(mimetype="audio/mpeg", seconds=30)),
        "audio",
        None,
        model.Media(mime="audio/mpeg", duration_s=30),
    ),
    (
        e2e.Message(
            audioMessage=e2e.AudioMessage(mimetype="audio/ogg; codecs=opus", seconds=4, PTT=True)
        ),
        "voice",
        None,
        model.Media(mime="audio/ogg; codecs=opus", duration_s=4),
    ),
    (
        e2e.Message(
            documentMessage=e2e.DocumentMessage(
                fileName="a.pdf", caption="invoice", mimetype="application/pdf", fileLength=100
            )
        ),
        "document",
        "invoice",
        model.Media(mime="application/pdf", size_bytes=100, filename="a.pdf", caption="invoice"),
    ),
    (
        e2e.Message(
            stickerMessage=e2e.StickerMessage(mimetype="image/webp", width=512, height=512)
        ),
        "sticker",
        None,
        model.Media(mime="image/webp", width=512, height=512),
    ),
    (
        e2e.Message(
            locationMessage=e2e.LocationMessage(
                degreesLatitude=52.52, degreesLongitude=13.405, name="Berlin"
            )
        ),
        "location",
        "52.520000,13.405000 Berlin",
        None,
    ),
    (
        e2e.Message(contactMessage=e2e.ContactMessage(displayName="Bob", vcard="BEGIN:VCARD")),
        "contact",
        "Bob",
        None,
    ),
    (
        e2e.Message(
            pollCreationMessageV3=e2e.PollCreationMessage(
                name="Lunch?",
                options=[
                    e2e.PollCreationMessage.Option(optionName="yes"),
                    e2e.PollCreationMessage.Option(optionName="no"),
                ],
            )
        ),
        "poll",
        "Lunch?\n- yes\n- no",
        None,
    ),
]


@pytest.mark.parametrize(
    ("body", "kind", "text", "media"), KINDS, ids=[k[1] + str(i) for i, k in enumerate(KINDS)]
)
def test_message_kinds(body, kind, text, media):
    ev = message_ev(body)
    msg = tr.message_from_event(ev)
    assert msg is not None
    assert (msg.kind, msg.text, msg.media) == (kind, text, media)
    assert msg.wa_id == "M1" and msg.chat == ANN and msg.sender == ANN
    assert msg.sent_at_ms == TS_MS  # Info.Timestamp is already milliseconds
    assert msg.push_name == "Ann" and not msg.from_me and not msg.from_history
    assert npb.Message.FromString(msg.raw) == ev


@pytest.mark.parametrize("field", ["pollCreationMessage", "pollCreationMessageV2"])
def test_poll_versions(field):
    poll = e2e.PollCreationMessage(
        name="Q", options=[e2e.PollCreationMessage.Option(optionName="a")]
    )
    msg = tr.message_from_event(message_ev(e2e.Message(**{field: poll})))
    assert (msg.kind, msg.text) == ("poll", "Q\n- a")


def test_reaction_edit_revoke_refer_to_their_message():
    react = tr.message_from_event(
        message_ev(e2e.Message(reactionMessage=e2e.ReactionMessage(key=key("ORIG"), text="👍")))
    )
    assert (react.kind, react.text, react.ref_id) == ("reaction", "👍", "ORIG")
    edit = tr.message_from_event(
        message_ev(
            e2e.Message(
                protocolMessage=e2e.ProtocolMessage(
                    key=key("ORIG"), type=14, editedMessage=e2e.Message(conversation="fixed")
                )
            ),
            is_edit=True,
        )
    )
    assert (edit.kind, edit.text, edit.ref_id) == ("edit", "fixed", "ORIG")
    wrapped = tr.message_from_event(
        message_ev(
            e2e.Message(
                editedMessage=e2e.FutureProofMessage(
                    message=e2e.Message(
                        protocolMessage=e2e.ProtocolMessage(
                            key=key("ORIG"),
                            type=14,
                            editedMessage=e2e.Message(conversation="again"),
                        )
                    )
                )
            )
        )
    )
    assert (wrapped.kind, wrapped.text, wrapped.ref_id) == ("edit", "again", "ORIG")
    revoke = tr.message_from_event(
        message_ev(e2e.Message(protocolMessage=e2e.ProtocolMessage(key=key("ORIG"), type=0)))
    )
    assert (revoke.kind, revoke.ref_id) == ("revoke", "ORIG")


def test_wrappers_and_protocol_payloads():
    eph = e2e.Message(
        ephemeralMessage=e2e.FutureProofMessage(
            message=e2e.Message(
                viewOnceMessageV2=e2e.FutureProofMessage(
                    message=e2e.Message(imageMessage=e2e.ImageMessage(caption="once"))
                )
            )
        )
    )
    assert tr.message_from_event(message_ev(eph)).kind == "image"
    sync = e2e.Message(protocolMessage=e2e.ProtocolMessage(type=5))
    assert tr.message_from_event(message_ev(sync)) is None
    keys_only = e2e.Message(
        senderKeyDistributionMessage=e2e.SenderKeyDistributionMessage(groupID="g")
    )
    assert tr.message_from_event(message_ev(keys_only)) is None
    other = e2e.Message(groupInviteMessage=e2e.GroupInviteMessage(groupName="x"))
    assert tr.message_from_event(message_ev(other)).kind == "other"


def test_lid_chat_and_sender_become_phone_jids_with_lid_kept():
    inbound = tr.message_from_event(
        message_ev(e2e.Message(conversation="x"), chat=ANN_LID, sender=ANN_LID, sender_alt=ANN)
    )
    assert (inbound.chat, inbound.chat_alt) == (ANN, ANN_LID)
    assert (inbound.sender, inbound.sender_alt) == (ANN, ANN_LID)
    outbound = tr.message_from_event(
        message_ev(
            e2e.Message(conversation="y"),
            chat=ANN_LID,
            sender="999@lid",
            from_me=True,
            recipient_alt=ANN,
        ),
        own_jid=ME,
    )
    assert (outbound.chat, outbound.chat_alt) == (ANN, ANN_LID)
    assert (outbound.sender, outbound.sender_alt, outbound.from_me) == (ME, "999@lid", True)
    unknown = tr.message_from_event(
        message_ev(e2e.Message(conversation="z"), chat=ANN_LID, sender=ANN_LID)
    )
    assert (unknown.chat, unknown.chat_alt, unknown.sender) == (ANN_LID, None, ANN_LID)


def test_group_and_status_broadcast():
    grp = tr.message_from_event(
        message_ev(e2e.Message(conversation="hey"), chat=GROUP, sender=ANN, group=True)
    )
    assert grp.is_group and grp.chat == GROUP and grp.sender == ANN and not grp.is_broadcast
    status = tr.message_from_event(
        message_ev(
            e2e.Message(imageMessage=e2e.ImageMessage()), chat="status@broadcast", sender=ANN
        )
    )
    assert status.is_broadcast and status.chat == "status@broadcast" and status.kind == "image"


@pytest.mark.parametrize(
    ("rtype", "expected"),
    [
        (1, "delivered"),
        (4, "read"),
        (6, "played"),
        (2, None),
        (3, None),
        (5, None),
        (7, None),
        (8, None),
    ],
)
def test_receipts(rtype, expected):
    ev = npb.Receipt(
        MessageSource=npb.MessageSource(
            Chat=jid(ANN_LID),
            Sender=jid(ANN_LID),
            SenderAlt=jid(ANN),
            IsFromMe=False,
            IsGroup=False,
        ),
        MessageIDs=["A", "B"],
        Timestamp=1_700_000_000,
        Type=rtype,
    )
    r = tr.receipt_from_event(ev)
    if expected is None:
        assert r is None
    else:
        assert r == model.Receipt(
            chat=ANN, sender=ANN, wa_ids=("A", "B"), type=expected, at_ms=1_700_000_000_000
        )  # seconds -> ms


def wmi(wa_id, text, *, remote=ANN, from_me=False, participant="", ts=1_700_000_100):
    return web.WebMessageInfo(
        key=common.MessageKey(remoteJID=remote, fromMe=from_me, ID=wa_id, participant=participant),
        messageTimestamp=ts,
        message=e2e.Message(conversation=text),
        pushName="Ann" if not from_me else "",
    )


def test_history_sync():
    data = hs.HistorySync(
        syncType=3,
        conversations=[
            hs.Conversation(
                ID=ANN,
                name="Ann B",
                messages=[
                    hs.HistorySyncMsg(message=wmi("H1", "old")),
                    hs.HistorySyncMsg(message=wmi("H2", "mine", from_me=True)),
                    hs.HistorySyncMsg(
                        message=web.WebMessageInfo(
                            key=common.MessageKey(ID="STUB"), messageStubType=1
                        )
                    ),
                ],
            ),
            hs.Conversation(
                ID=GROUP,
                name="Team",
                messages=[
                    hs.HistorySyncMsg(message=wmi("H3", "g", remote=GROUP, participant=ANN)),
                ],
            ),
            hs.Conversation(ID=ANN_LID, pnJID=ANN, messages=[]),
        ],
        pushnames=[hs.Pushname(ID=ANN, pushname="Annie")],
    )
    out = tr.history_events(npb.HistorySync(Data=data), own_jid=ME)
    sync, contact = out
    assert isinstance(sync, model.HistorySync) and sync.sync_type == "recent"
    assert sync.conversations == 3
    assert sync.chat_names == ((ANN, "Ann B"), (GROUP, "Team"))
    h1, h2, h3 = sync.messages
    assert (h1.wa_id, h1.sender, h1.sent_at_ms, h1.from_history) == (
        "H1",
        ANN,
        1_700_000_100_000,
        True,
    )
    assert (h2.sender, h2.from_me) == (ME, True)
    assert (h3.chat, h3.sender, h3.is_group, h3.chat_name) == (GROUP, ANN, True, "Team")
    assert web.WebMessageInfo.FromString(h1.raw).key.ID == "H1"
    assert contact == model.Contact(jid=ANN, push_name="Annie")


def test_lifecycle():
    me = npb.Device(
        JID=jid(ME, device=7), PushName="Me", Platform="", BussinessName="", Initialized=True
    )
    cases = [
        ("Connected", npb.Connected(status=True), model.Connected(jid=ME, push_name="Me")),
        ("Disconnected", npb.Disconnected(status=True), model.Disconnected()),
        ("StreamError", npb.StreamError(), model.Disconnected()),
        (
            "KeepAliveTimeout",
            npb.KeepAliveTimeout(ErrorCount=2, LastSuccess=1),
            model.KeepAliveTimeout(error_count=2),
        ),
        ("KeepAliveRestored", npb.KeepAliveRestored(), model.KeepAliveRestored()),
        (
            "OfflineSyncCompleted",
            npb.OfflineSyncCompleted(Count=5),
            model.OfflineSyncCompleted(count=5),
        ),
        (
            "LoggedOut",
            npb.LoggedOut(OnConnect=True, Reason=2),
            model.LoggedOut(reason="logged_out (on connect)"),
        ),
        ("StreamReplaced", npb.StreamReplaced(), model.StreamReplaced()),
        (
            "TemporaryBan",
            npb.TemporaryBan(Code=2, Expire=3600),
            model.TemporaryBan(code=2, expire_s=3600.0),
        ),
        ("ClientOutdated", npb.ClientOutdated(), model.ClientOutdated()),
        (
            "ConnectFailure",
            npb.ConnectFailure(Reason=8, Message="boom"),
            model.ConnectFailure(reason=8, message="boom"),
        ),
        ("ConnectFailure", npb.ConnectFailure(Reason=6, Message="old"), model.ClientOutdated()),
        (
            "PairStatus",
            npb.PairStatus(ID=jid(ME, 9), Status=2, BusinessName="", Platform=""),
            model.PairSuccess(jid=ME),
        ),
        (
            "PairStatus",
            npb.PairStatus(ID=jid(None), Status=1, Error="nope", BusinessName="", Platform=""),
            model.PairFailed(reason="nope"),
        ),
    ]
    for name, ev, expected in cases:
        assert tr.lifecycle_event(name, ev, me=me) == expected, name
    assert tr.lifecycle_event("Connected", npb.Connected(status=True)) == model.Connected()


def test_units_and_jids():
    assert tr.to_ms(1_700_000_000) == 1_700_000_000_000
    assert tr.to_ms(1_700_000_000_123) == 1_700_000_000_123
    assert tr.to_ms(1_700_000_000_123_456_789) == 1_700_000_000_123
    assert tr.parse_jid("4915:12@s.whatsapp.net") == "4915@s.whatsapp.net"
    assert tr.jid_str(jid(None)) is None
    assert tr.dead(RuntimeError("x")) == model.ClientDead(error="RuntimeError: x")
