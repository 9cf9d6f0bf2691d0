"""What oxyd sends: one queued request, as plain data every engine understands.

An `Outgoing` crosses the engine seam (and an engine host's pipe), so it holds only plain
values: the validated request body (`body`, JSON-able) and the media bytes (`data`).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

# Kinds that carry a file in `data`.
MEDIA_KINDS = ("image", "video", "audio", "voice", "document", "sticker")
# Kinds that act on an earlier message (`body["ref"]`: {"id", "sender", "from_me"}).
REF_KINDS = ("reaction", "edit", "revoke")
KINDS = ("text", *MEDIA_KINDS, "location", "contact", "poll", *REF_KINDS)
# WhatsApp's own caption limit; longer captions are refused, never cut silently.
MAX_CAPTION_CHARS = 1024


def new_wa_id() -> str:
    """A message id in whatsmeow's format ("3EB0" + 18 upper-case hex digits of a hash of the
    time and random bytes), chosen when a request is queued and reused on every attempt."""
    seed = time.time_ns().to_bytes(8, "big") + os.urandom(16)
    return "3EB0" + hashlib.sha256(seed).hexdigest()[:18].upper()


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
