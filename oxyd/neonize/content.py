"""What a waE2E Message holds: (kind, text, media, ref_id), through the wrappers history sync
keeps (ephemeral, view-once, ...). Pure: protobufs in, plain values out."""

from __future__ import annotations

from typing import Any

from oxyd.model import Media
from oxyd.neonize.media import make_ref

# Containers whose inner message is the real one (whatsmeow unwraps most of them already for
# live events, but history sync WebMessageInfo arrives wrapped).
_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "lottieStickerMessage",
    "deviceSentMessage",
)
_POLLS = tuple(f"pollCreationMessage{v}" for v in ("", "V2", "V3", "V4", "V5", "V6"))
_PROTOCOL_REVOKE = 0
_PROTOCOL_EDIT = 14


def _unwrap(msg: Any) -> Any:
    for _ in range(4):  # wrappers nest at most a few levels deep
        for name in _WRAPPERS:
            if msg.HasField(name):
                msg = getattr(msg, name).message
                break
        else:
            return msg
    return msg


def _media(
    m: Any,
    field: str,
    *,
    duration: bool = False,
    size: bool = False,
    filename: bool = False,
    caption: str | None = None,
) -> Media:
    return Media(
        mime=m.mimetype or None,
        size_bytes=int(m.fileLength) if m.fileLength else None,
        filename=(m.fileName or None) if filename else None,
        sha256=m.fileSHA256.hex() if m.fileSHA256 else None,
        duration_s=(int(m.seconds) or None) if duration else None,
        width=(int(m.width) or None) if size else None,
        height=(int(m.height) or None) if size else None,
        caption=caption,
        ref=make_ref(field, m),
    )


def _text_of(msg: Any) -> str | None:
    """Plain text of a (possibly edited) message body."""
    kind, text, _, _ = content(msg)
    return text if kind is not None else None


def content(msg: Any) -> tuple[str | None, str | None, Media | None, str | None]:
    """(kind, text, media, ref_id) of a waE2E Message; kind None = not a user message."""
    msg = _unwrap(msg)
    if msg.conversation:
        return "text", msg.conversation, None, None
    if msg.HasField("extendedTextMessage"):
        return "text", msg.extendedTextMessage.text, None, None
    if msg.HasField("imageMessage"):
        m = msg.imageMessage
        cap = m.caption or None
        return "image", cap, _media(m, "imageMessage", size=True, caption=cap), None
    if msg.HasField("videoMessage") or msg.HasField("ptvMessage"):
        field = "videoMessage" if msg.HasField("videoMessage") else "ptvMessage"
        m, cap = getattr(msg, field), getattr(msg, field).caption or None
        return "video", cap, _media(m, field, duration=True, size=True, caption=cap), None
    if msg.HasField("audioMessage"):
        m = msg.audioMessage
        return ("voice" if m.PTT else "audio"), None, _media(m, "audioMessage", duration=True), None
    if msg.HasField("documentMessage"):
        m = msg.documentMessage
        cap = m.caption or m.title or None
        return "document", cap, _media(m, "documentMessage", filename=True, caption=cap), None
    if msg.HasField("stickerMessage"):
        return "sticker", None, _media(msg.stickerMessage, "stickerMessage", size=True), None
    if msg.HasField("locationMessage") or msg.HasField("liveLocationMessage"):
        m = msg.locationMessage if msg.HasField("locationMessage") else msg.liveLocationMessage
        where = f"{m.degreesLatitude:.6f},{m.degreesLongitude:.6f}"
        label = ", ".join(x for x in (getattr(m, "name", ""), getattr(m, "address", "")) if x)
        return "location", f"{where} {label}".strip(), None, None
    if msg.HasField("contactMessage"):
        return "contact", msg.contactMessage.displayName or None, None, None
    if msg.HasField("contactsArrayMessage"):
        names = [c.displayName for c in msg.contactsArrayMessage.contacts if c.displayName]
        return "contact", "\n".join(names) or None, None, None
    if msg.HasField("reactionMessage"):
        m = msg.reactionMessage
        return "reaction", m.text, None, m.key.ID or None  # "" text = reaction removed
    if msg.HasField("protocolMessage"):
        m = msg.protocolMessage
        if m.type == _PROTOCOL_REVOKE and m.key.ID:
            return "revoke", None, None, m.key.ID
        if m.type == _PROTOCOL_EDIT:
            return "edit", _text_of(m.editedMessage), None, m.key.ID or None
        return None, None, None, None
    if msg.HasField("editedMessage"):
        return _edit(msg)
    for name in _POLLS:
        if msg.HasField(name):
            poll = getattr(msg, name)
            lines = [poll.name, *(f"- {o.optionName}" for o in poll.options)]
            return "poll", "\n".join(lines), None, None
    if msg.HasField("pollUpdateMessage"):
        return "poll_vote", None, None, msg.pollUpdateMessage.pollCreationMessageKey.ID or None
    if msg.HasField("senderKeyDistributionMessage") or msg.HasField("messageContextInfo"):
        # Key material alone: whatsmeow sends the real content in the same or a later message.
        set_fields = [f.name for f, _ in msg.ListFields()]
        if set(set_fields) <= {"senderKeyDistributionMessage", "messageContextInfo"}:
            return None, None, None, None
    fields = [f.name for f, _ in msg.ListFields() if f.name != "messageContextInfo"]
    return ("other" if fields else None), None, None, None


def _edit(msg: Any) -> tuple[str | None, str | None, Media | None, str | None]:
    inner = msg.editedMessage.message
    if inner.HasField("protocolMessage"):
        return content(inner)
    return "edit", _text_of(inner), None, None
