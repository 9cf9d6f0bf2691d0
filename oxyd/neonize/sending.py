"""Sending on neonize (design §12): every kind of outgoing message built with neonize's
protobufs and builders, and the Client's send methods (SendingMixin, mixed into NeonizeClient).

Rules kept here (see also neonize-notes.md):
- Nothing triggers a network lookup the caller did not ask for: mentions come as JIDs (never
  parsed from the text, so a caption full of `@...g.us` costs no group lookups), and link
  previews are only fetched when the request asks for one.
- A media upload does not hold the gate's shared side for its whole length (a pending connect
  or stop would wait behind every upload, and every newer call behind that): the shared hold
  covers only the entry of Go's Upload, whose first statement reads the process-wide client
  map; the rest is network I/O on this tenant's own client.
- Images are decoded (for the thumbnail) in a thread, bounded in pixels; a failure means no
  thumbnail, never a failed send.
- Audio and video skip neonize's builders, which need an ffmpeg binary on PATH; voice notes
  arrive already converted (oxyd/voice.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import TYPE_CHECKING, Any

from oxyd.engine import EngineError, NotConnected, SendRejected, SendUnknown
from oxyd.neonize.events import to_ms
from oxyd.outgoing import Outgoing, SendResult

if TYPE_CHECKING:
    from oxyd.neonize.client import NeonizeClient

# Go's Upload reads the client map in its first statement; this is the margin after the
# thread entered the call before the shared hold is let go.
UPLOAD_ENTRY_HOLD_S = 0.05
THUMB_PX = 72
MAX_THUMB_SOURCE_PIXELS = 40_000_000
_UPLOAD_TYPE = {"image": 0, "sticker": 0, "video": 1, "audio": 2, "voice": 2, "document": 3}


def jid(value: str) -> Any:
    """A neonize JID from "user@server" (the device part, if any, is dropped)."""
    from neonize.proto import Neonize_pb2 as npb

    user, sep, server = value.partition("@")
    user = user.split(":")[0]
    if not sep or not user or not server:
        raise SendRejected("invalid_recipient", f"{value!r} is not a WhatsApp address")
    return npb.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def context(out: Outgoing) -> Any | None:
    """ContextInfo for mentions and a quoted reply (None when neither is asked for)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    body = out.body
    mentions = body.get("mentions") or []
    reply = body.get("reply_to")
    if not mentions and not reply:
        return None
    ctx = e2e.ContextInfo(mentionedJID=list(mentions))
    if reply:
        ctx.stanzaID = reply["id"]
        if reply.get("sender"):
            ctx.participant = reply["sender"]
        ctx.quotedMessage.CopyFrom(e2e.Message(conversation=reply.get("text") or ""))
    return ctx


async def build(client: NeonizeClient, out: Outgoing) -> Any:
    """The waE2E.Message for `out` (uploads its media first)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    body, ctx = out.body, context(out)
    kind = out.kind
    if kind == "text":
        if ctx is None and not body.get("link_preview"):
            return e2e.Message(conversation=body["text"])
        ext = e2e.ExtendedTextMessage(text=body["text"])
        if body.get("link_preview"):
            # Asked for: neonize fetches the first link's page (from this server).
            try:
                preview = await client.native()._generate_link_preview(body["text"])
            except Exception:
                preview = None
            if preview is not None:
                ext.MergeFrom(preview)
        if ctx is not None:
            ext.contextInfo.CopyFrom(ctx)
        return e2e.Message(extendedTextMessage=ext)
    if kind in _UPLOAD_TYPE:
        return await _media(client, out, ctx)
    if kind == "location":
        loc = e2e.LocationMessage(degreesLatitude=body["lat"], degreesLongitude=body["lng"])
        for key, attr in (("name", "name"), ("address", "address")):
            if body.get(key):
                setattr(loc, attr, body[key])
        if ctx is not None:
            loc.contextInfo.CopyFrom(ctx)
        return e2e.Message(locationMessage=loc)
    if kind == "contact":
        from neonize.utils import gen_vcard

        card = e2e.ContactMessage(
            displayName=body["name"], vcard=gen_vcard(body["name"], body["phone"])
        )
        if ctx is not None:
            card.contextInfo.CopyFrom(ctx)
        return e2e.Message(contactMessage=card)
    if kind == "edit":
        from neonize.builder import build_edit

        return build_edit(jid(out.chat), body["ref"]["id"], e2e.Message(conversation=body["text"]))
    if kind == "revoke":
        from neonize.builder import build_revoke

        ref = body["ref"]
        me = jid(client.own_jid or ref.get("sender") or out.chat)
        sender = jid(ref["sender"]) if ref.get("sender") else me
        return build_revoke(jid(out.chat), sender, ref["id"], me)
    if kind in ("poll", "reaction"):
        return None  # built by Go (neonize's builders) under the send's shared hold
    raise SendRejected("invalid_message", f"unknown message kind {kind!r}")


async def build_in_go(nc: Any, out: Outgoing, own_jid: str | None) -> Any:
    """Poll and reaction messages through neonize's Go builders (fast, no network)."""
    body = out.body
    if out.kind == "poll":
        from neonize.utils.enum import VoteType

        votes = VoteType.MULTIPLE if body.get("multiple") else VoteType.SINGLE
        msg = await nc.build_poll_vote_creation(body["question"], body["options"], votes)
        ctx = context(out)
        if ctx is not None:
            msg.pollCreationMessage.contextInfo.MergeFrom(ctx)
        return msg
    ref = body["ref"]
    sender = ref["sender"] if not ref.get("from_me") else (own_jid or ref["sender"])
    return await nc.build_reaction(jid(out.chat), jid(sender), ref["id"], body["emoji"])


async def _media(client: NeonizeClient, out: Outgoing, ctx: Any | None) -> Any:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    data, body, kind = out.data or b"", out.body, out.kind
    up = await upload(client, data, _UPLOAD_TYPE[kind])
    common = dict(
        URL=up.url,
        directPath=up.DirectPath,
        fileEncSHA256=up.FileEncSHA256,
        fileLength=up.FileLength,
        fileSHA256=up.FileSHA256,
        mediaKey=up.MediaKey,
        mimetype=body.get("mime") or "application/octet-stream",
    )
    caption = body.get("caption")
    if kind == "image":
        msg = e2e.ImageMessage(**common)
        thumb = await asyncio.to_thread(thumbnail, data)
        if thumb is not None:
            msg.JPEGThumbnail, msg.width, msg.height = thumb
        field = "imageMessage"
    elif kind == "video":
        msg, field = e2e.VideoMessage(**common), "videoMessage"
    elif kind in ("audio", "voice"):
        msg, field = e2e.AudioMessage(**common, PTT=kind == "voice"), "audioMessage"
        if body.get("duration_s"):
            msg.seconds = int(body["duration_s"])
        if body.get("waveform_b64"):
            msg.waveform = base64.b64decode(body["waveform_b64"])
    elif kind == "document":
        msg, field = e2e.DocumentMessage(**common), "documentMessage"
        name = body.get("filename") or "file"
        msg.fileName, msg.title = name, name
    else:
        msg, field = e2e.StickerMessage(**common), "stickerMessage"
    if caption and kind in ("image", "video", "document"):
        msg.caption = caption
    if ctx is not None:
        msg.contextInfo.CopyFrom(ctx)
    return e2e.Message(**{field: msg})


async def upload(client: NeonizeClient, data: bytes, media_type: int) -> Any:
    """Go's Upload with the shared hold only across its entry (see the module docstring)."""
    from neonize._binder import gocode
    from neonize.proto.Neonize_pb2 import UploadReturnFunction

    nc = client.native()
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    def call() -> bytes:
        loop.call_soon_threadsafe(entered.set)
        return gocode.Upload(nc.uuid, data, len(data), media_type)

    async with client.engine.gate.shared():
        if not client.running:
            raise NotConnected("not connected")
        # Shielded: once started, the Go call runs to its end whatever happens to us, and
        # the hold must not end before its map read.
        pending = asyncio.ensure_future(loop.run_in_executor(None, call))
        await asyncio.shield(_entered(entered, pending))
    raw = await pending
    result = UploadReturnFunction.FromString(raw)
    if result.Error:
        raise EngineError(f"upload failed: {result.Error}")
    return result.UploadResponse


async def _entered(entered: asyncio.Event, pending: asyncio.Future) -> None:
    waiter = asyncio.ensure_future(entered.wait())
    try:
        await asyncio.wait({waiter, pending}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not pending.done():
        await asyncio.sleep(UPLOAD_ENTRY_HOLD_S)


def thumbnail(data: bytes) -> tuple[bytes, int, int] | None:
    """(JPEG thumbnail, width, height) of an image, or None (in a thread: decoding is CPU)."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_THUMB_SOURCE_PIXELS:
                return None
            img.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at a fraction
            img.thumbnail((THUMB_PX, THUMB_PX))
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=60)
            return out.getvalue(), width, height
    except Exception:
        return None


# whatsmeow error texts that no retry can fix.
_TERMINAL_MARKS = (
    ("not on whatsapp", "not_on_whatsapp"),
    ("no such user", "not_on_whatsapp"),
    ("invalid jid", "invalid_recipient"),
    ("unknown server", "invalid_recipient"),
    ("too large", "media_too_large"),
    ("413", "media_too_large"),
)


# whatsmeow errors of SendMessage after the message node was written to the websocket: the
# server may have accepted it (ErrMessageTimedOut, DisconnectedError{"message send"}, a write
# that failed part way). Every other SendMessage error returns before anything is written.
_UNKNOWN_MARKS = (
    "timed out waiting for message send response",
    "disconnected before message send returned response",
    "failed to send message node",
)


def classify(e: Exception) -> EngineError:
    """A neonize send error as terminal (SendRejected), outcome unknown (SendUnknown: the
    message may have left) or transient (EngineError: nothing was sent)."""
    text = str(e) or type(e).__name__
    low = text.lower()
    for mark, code in _TERMINAL_MARKS:
        if mark in low:
            return SendRejected(code, f"send refused: {text}")
    if any(mark in low for mark in _UNKNOWN_MARKS):
        return SendUnknown(f"no answer from WhatsApp after the message left: {text}")
    return EngineError(f"send failed: {text}")


class SendingMixin:
    """Mixed into NeonizeClient: the Client's send, mark_read and chat_presence. Uses its
    `_nc`, `engine` (gate, clock), `running` and `_own_jid`."""

    reuses_message_ids = False  # SendMessage lets whatsmeow choose the id (see send())

    @property
    def own_jid(self) -> str | None:
        return self._own_jid

    async def send(self, out: Outgoing) -> SendResult:
        """neonize 0.5.2's SendMessage export cannot take our id (whatsmeow generates one;
        `reuses_message_ids` is False): every call is a new message, so the sender never
        times one out nor resends one that may have left (SendUnknown, see
        oxyd/send_attempt.py). The result carries WhatsApp's id."""
        to = jid(out.chat)
        if not self.running:
            raise NotConnected("not connected")
        try:
            msg = await build(self, out)
        except EngineError:
            raise
        except Exception as e:  # before anything left: nothing was sent
            raise EngineError(f"cannot build the message: {type(e).__name__}: {e}") from e

        async def go_send() -> Any:
            from neonize.exc import SendMessageError

            if not self.running or not await self._nc.is_logged_in:
                raise NotConnected("not connected")
            try:
                body = msg if msg is not None else await build_in_go(self._nc, out, self._own_jid)
            except EngineError:
                raise
            except Exception as e:
                raise EngineError(f"cannot build the message: {type(e).__name__}: {e}") from e
            try:
                return await self._nc.send_message(to, body)
            except SendMessageError as e:  # whatsmeow's own error: its text tells
                raise classify(e) from e
            except Exception as e:  # anything else may come after the message left
                raise SendUnknown(f"the send call failed: {type(e).__name__}: {e}") from e

        # gate.run: a cancelled caller never frees the gate while Go still sends.
        resp = await self.engine.gate.run(go_send, exclusive=False)
        return SendResult(resp.ID, to_ms(resp.Timestamp) or self.engine.clock.now_ms())

    async def mark_read(self, chat: str, ids: list[str], sender: str | None) -> None:
        from neonize.utils.enum import ReceiptType

        async def go_mark() -> None:
            if not self.running:
                raise NotConnected("not connected")
            try:
                await self._nc.mark_read(
                    *ids,
                    chat=jid(chat),
                    sender=jid(sender or chat),
                    receipt=ReceiptType.READ,
                )
            except Exception as e:
                raise EngineError(f"mark read failed: {e}") from e

        await self.engine.gate.run(go_mark, exclusive=False)

    async def chat_presence(self, chat: str, state: str) -> None:
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        typing = state != "paused"
        media = ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO
        if state != "recording":
            media = ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT

        async def go_presence() -> None:
            if not self.running:
                raise NotConnected("not connected")
            try:
                await self._nc.send_chat_presence(
                    jid(chat),
                    ChatPresence.CHAT_PRESENCE_COMPOSING
                    if typing
                    else ChatPresence.CHAT_PRESENCE_PAUSED,
                    media,
                )
            except Exception as e:
                raise EngineError(f"presence failed: {e}") from e

        await self.engine.gate.run(go_presence, exclusive=False)
