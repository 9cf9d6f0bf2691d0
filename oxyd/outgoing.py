"""What oxyd sends: one queued request, as plain data every engine understands.

An `Outgoing` crosses the engine seam (and an engine host's pipe), so it holds only plain
values: the validated request body (`body`, JSON-able) and the media bytes (`data`).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from typing import Any

from oxyd.model import Media, Message

# Kinds that carry a file in `data`.
MEDIA_KINDS = ("image", "video", "audio", "voice", "document", "sticker")
# Kinds that act on an earlier message (`body["ref"]`: {"id", "sender", "from_me"}).
REF_KINDS = ("reaction", "edit", "revoke")
KINDS = ("text", *MEDIA_KINDS, "location", "contact", "poll", *REF_KINDS)
# WhatsApp's own caption limit; longer captions are refused, never cut silently.
MAX_CAPTION_CHARS = 1024


# Ids must be unique, not unpredictable: one generator seeded from the OS per process, not
# an os.urandom call (a syscall, slow on a VM) and a hash per queued message.
_ids = random.Random(int.from_bytes(os.urandom(32), "big"))


def new_wa_id() -> str:
    """A message id in whatsmeow's format ("3EB0" + 18 upper-case hex digits), chosen when a
    request is queued and reused on every attempt."""
    return f"3EB0{_ids.getrandbits(72):018X}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send. `body` by kind (every kind may add "reply_to": {"id", "sender",
    "text"} and "mentions": [jid, ...]):

    - text: {"text", "link_preview"}
    - image/video/audio/document/sticker: {"mime", "filename", "caption"}; voice adds
      {"duration_s", "waveform_b64"} (already Ogg/Opus mono)
    - location: {"lat", "lng", "name", "address"}; contact: {"name", "phone"}
    - poll: {"question", "options", "multiple"}
    - reaction: {"ref", "emoji"}; edit: {"ref", "text"}; revoke: {"ref"}
    """

    id: str
    chat: str
    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the server accepted. `wa_id` equals Outgoing.id unless the engine cannot choose
    the id (neonize 0.5.2's SendMessage always generates its own)."""

    wa_id: str
    sent_at_ms: int


def summary_text(kind: str, body: dict[str, Any]) -> str | None:
    """The text a stored message shows for an outgoing one of any kind."""
    if kind == "poll":
        return body.get("question")
    if kind == "location":
        return body.get("name") or f"{body.get('lat')},{body.get('lng')}"
    if kind == "contact":
        return body.get("name")
    return body.get("text") or body.get("caption") or body.get("emoji")


def as_message(out: Outgoing, res: SendResult, own_jid: str) -> Message:
    """A sent message as the store keeps every message (chats, counters, receipts)."""
    body, data = out.body, out.data
    media = None
    if out.kind in MEDIA_KINDS:
        media = Media(
            mime=body.get("mime"),
            size_bytes=len(data) if data else None,
            filename=body.get("filename"),
            sha256=hashlib.sha256(data).hexdigest() if data else None,
            duration_s=body.get("duration_s"),
        )
    return Message(
        wa_id=res.wa_id,
        chat=out.chat,
        sender=own_jid,
        from_me=True,
        sent_at_ms=res.sent_at_ms,
        kind=out.kind,
        text=summary_text(out.kind, body),
        media=media,
        ref_id=(body.get("ref") or {}).get("id") or (body.get("reply_to") or {}).get("id"),
    )
