"""Outgoing messages on the neonize engine, offline: every kind built with neonize's real
protobufs and builders over a fake upload; the upload does not hold the gate's shared side."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import uuid

import pytest

from oxyd.engine import EngineError, SendRejected, SendUnknown
from oxyd.neonize import sending
from oxyd.neonize.engine import NeonizeEngine, import_neonize
from oxyd.outgoing import Outgoing, new_wa_id

import_neonize()
npb = pytest.importorskip("neonize.proto.Neonize_pb2")

CHAT = "4915111111111@s.whatsapp.net"
GROUP = "120363000000000001@g.us"


@pytest.fixture
def client(tmp_path):
    c = NeonizeEngine(tmp_path).client(f"t{uuid.uuid4().hex[:10]}", lambda ev: None)
    c._own_jid = "15550001234@s.whatsapp.net"
    return c


@pytest.fixture
def fake_upload(monkeypatch):
    uploads: list[tuple[int, int]] = []

    async def upload(client, data, media_type):
        uploads.append((len(data), media_type))
        return npb.UploadResponse(
            url="https://mmg.example/x",
            DirectPath="/v/t62/x",
            MediaKey=b"k" * 32,
            FileEncSHA256=b"e" * 32,
            FileSHA256=b"s" * 32,
            FileLength=len(data),
        )

    monkeypatch.setattr(sending, "upload", upload)
    return uploads


def out(kind, chat=CHAT, data=None, **body):
    return Outgoing(new_wa_id(), chat, kind, body, data)


def png(size=(300, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


async def test_text_mentions_and_quoted_reply(client):
    plain = await sending.build(client, out("text", text="hi"))
    assert plain.conversation == "hi"
    msg = await sending.build(
        client,
        out(
            "text",
            GROUP,
            text="hi @4915111111111 and @120363000000000002@g.us",
            mentions=[CHAT],
            reply_to={"id": "ABC", "sender": CHAT, "text": "question?"},
        ),
    )
    ctx = msg.extendedTextMessage.contextInfo
    assert msg.extendedTextMessage.text.startswith("hi @")
    assert list(ctx.mentionedJID) == [CHAT]  # only the given JIDs: no group lookups
    assert not ctx.groupMentions
    assert (ctx.stanzaID, ctx.participant) == ("ABC", CHAT)
    assert ctx.quotedMessage.conversation == "question?"


async def test_every_media_kind(client, fake_upload):
    image = await sending.build(
        client, out("image", data=png(), mime="image/png", caption="pic", mentions=[CHAT])
    )
    im = image.imageMessage
    assert im.caption == "pic" and im.mimetype == "image/png" and im.URL
    assert (im.width, im.height) == (300, 200) and im.JPEGThumbnail[:3] == b"\xff\xd8\xff"
    assert list(im.contextInfo.mentionedJID) == [CHAT]
    video = await sending.build(client, out("video", data=b"v" * 10, mime="video/mp4"))
    assert video.videoMessage.mimetype == "video/mp4" and video.videoMessage.fileLength == 10
    audio = await sending.build(client, out("audio", data=b"a" * 10, mime="audio/mpeg"))
    assert audio.audioMessage.PTT is False
    wave = bytes(range(64))
    voice = await sending.build(
        client,
        out(
            "voice",
            data=b"OggS" + b"\0" * 20,
            mime="audio/ogg; codecs=opus",
            duration_s=7,
            waveform_b64=base64.b64encode(wave).decode(),
        ),
    )
    vm = voice.audioMessage
    assert vm.PTT is True and vm.seconds == 7 and vm.waveform == wave
    doc = await sending.build(
        client, out("document", data=b"%PDF-1", mime="application/pdf", filename="a.pdf")
    )
    assert doc.documentMessage.fileName == "a.pdf"
    sticker = await sending.build(client, out("sticker", data=b"RIFF....WEBP", mime="image/webp"))
    assert sticker.stickerMessage.mimetype == "image/webp"
    assert [t for _, t in fake_upload] == [0, 1, 2, 2, 3, 0]  # whatsmeow's media types


async def test_location_contact_edit_revoke(client):
    loc = await sending.build(client, out("location", lat=52.52, lng=13.405, name="Berlin"))
    assert loc.locationMessage.degreesLatitude == pytest.approx(52.52)
    assert loc.locationMessage.name == "Berlin"
    card = await sending.build(client, out("contact", name="Ann", phone="4915111111111"))
    assert card.contactMessage.displayName == "Ann"
    vcard = card.contactMessage.vcard
    assert "BEGIN:VCARD" in vcard and "4915111111111" in vcard
    edit = await sending.build(
        client, out("edit", ref={"id": "OLD", "sender": "", "from_me": True}, text="new")
    )
    proto = edit.editedMessage.message.protocolMessage
    assert proto.key.ID == "OLD" and proto.editedMessage.conversation == "new"
    revoke = await sending.build(
        client,
        out("revoke", ref={"id": "OLD", "sender": "15550001234@s.whatsapp.net", "from_me": True}),
    )
    assert revoke.protocolMessage.key.ID == "OLD" and revoke.protocolMessage.key.fromMe


async def test_poll_and_reaction_use_neonizes_go_builders(client):
    calls = []

    class FakeNative:
        async def build_poll_vote_creation(self, question, options, votes):
            calls.append(("poll", question, options, votes.name))
            from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

            return e2e.Message(pollCreationMessage=e2e.PollCreationMessage(name=question))

        async def build_reaction(self, chat, sender, msg_id, emoji):
            calls.append(("reaction", chat.User, sender.User, msg_id, emoji))
            return "reaction"

    assert await sending.build(client, out("poll", question="Q", options=["a", "b"])) is None
    poll = await sending.build_in_go(
        FakeNative(), out("poll", question="Q", options=["a", "b"], multiple=True), None
    )
    assert poll.pollCreationMessage.name == "Q"
    ref = {"id": "M1", "sender": "4915111111111@s.whatsapp.net", "from_me": False}
    await sending.build_in_go(FakeNative(), out("reaction", ref=ref, emoji="👍"), None)
    assert calls == [
        ("poll", "Q", ["a", "b"], "MULTIPLE"),
        ("reaction", "4915111111111", "4915111111111", "M1", "👍"),
    ]


def test_send_errors_split_transient_and_terminal():
    assert isinstance(sending.classify(Exception("server returned error 500")), EngineError)
    assert not isinstance(sending.classify(Exception("server returned error 500")), SendRejected)
    e = sending.classify(Exception("upload failed: 413 request entity too large"))
    assert isinstance(e, SendRejected) and e.code == "media_too_large"
    with pytest.raises(SendRejected):
        sending.jid("not-a-jid")


async def test_upload_lets_go_of_the_gate_while_the_bytes_travel(client, monkeypatch):
    """A connect (exclusive) gets the gate while a slow upload is still running."""
    from neonize._binder import gocode

    release = threading.Event()
    entered = threading.Event()

    def slow_upload(uuid_, data, size, media_type):
        entered.set()
        release.wait(10)
        resp = npb.UploadResponse(url="u", DirectPath="/p", Handle="h", FileLength=size)
        return npb.UploadReturnFunction(UploadResponse=resp).SerializePartialToString()

    monkeypatch.setattr(gocode, "Upload", slow_upload)
    loop = asyncio.get_running_loop()
    client._task = loop.create_future()  # looks like a running session
    try:
        up = asyncio.ensure_future(sending.upload(client, b"x" * 100, 0))
        await asyncio.to_thread(entered.wait, 5)
        gate = client.engine.gate

        async def exclusive_now():
            async with gate.exclusive():
                return True

        assert await asyncio.wait_for(exclusive_now(), 2.0)  # while the upload still runs
        assert not up.done()
        release.set()
        res = await asyncio.wait_for(up, 5)
        assert res.FileLength == 100
    finally:
        release.set()
        client._task.cancel()
        client._task = None


class FakeNative:
    """The Go side of a logged-in neonize client: send_message answers as scripted (the
    message itself is built by oxyd with neonize's real protobufs)."""

    def __init__(self, error: str | None = None, crash: Exception | None = None) -> None:
        self.error = error
        self.crash = crash
        self.sent: list[tuple[object, object]] = []

    @property
    def is_logged_in(self):
        async def yes() -> bool:
            return True

        return yes()

    async def send_message(self, to, message):
        from neonize.exc import SendMessageError

        self.sent.append((to, message))
        if self.crash is not None:
            raise self.crash
        if self.error is not None:
            raise SendMessageError(self.error)
        return npb.SendResponse(ID="3EB0WHATSMEOWCHOSE", Timestamp=1_700_000_000)


@pytest.fixture
async def session(client):
    """The client as if its session ran: `running` holds while the fixture lives."""
    client._task = asyncio.get_running_loop().create_future()
    yield client
    client._task.cancel()


async def test_send_takes_whatsapps_id_and_cannot_reuse_ours(session):
    from oxyd.neonize.pool import HostedClient

    assert session.reuses_message_ids is False and HostedClient.reuses_message_ids is False
    session._nc = FakeNative()
    queued = out("text", text="hi")
    res = await session.send(queued)
    assert (res.wa_id, res.sent_at_ms) == ("3EB0WHATSMEOWCHOSE", 1_700_000_000_000)
    assert res.wa_id != queued.id and len(session._nc.sent) == 1
    to, msg = session._nc.sent[0]
    assert (to.User, to.Server, msg.conversation) == ("4915111111111", "s.whatsapp.net", "hi")


@pytest.mark.parametrize(
    "error",
    [
        "timed out waiting for message send response",
        "failed to send message node: websocket: close sent",
        "websocket disconnected before message send returned response",
    ],
)
async def test_send_errors_after_the_message_left_are_unknown(session, error):
    session._nc = FakeNative(error)
    with pytest.raises(SendUnknown):
        await session.send(out("text", text="hi"))


async def test_send_errors_before_the_message_left_are_transient(session):
    session._nc = FakeNative("failed to get device list: info query timed out")
    with pytest.raises(EngineError) as e:
        await session.send(out("text", text="hi"))
    assert not isinstance(e.value, SendUnknown | SendRejected)


async def test_send_failures_other_than_whatsmeows_are_unknown_and_builds_are_not(session):
    session._nc = FakeNative(crash=ValueError("response did not parse"))
    with pytest.raises(SendUnknown):
        await session.send(out("text", text="hi"))
    with pytest.raises(EngineError) as e:  # the builder failed: nothing left
        await session.send(out("location", lat="north", lng=13.4))
    assert not isinstance(e.value, SendUnknown) and "cannot build" in str(e.value)


def test_a_dead_engine_host_is_an_unknown_outcome():
    from oxyd.neonize.link import HostDied

    assert issubclass(HostDied, SendUnknown)
