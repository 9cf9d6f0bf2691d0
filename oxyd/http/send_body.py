"""The body of POST /v1/tenants/{id}/messages (design §12), checked field by field.

Exactly one content kind per request; every error names its field. Media arrives as base64
in the JSON body; a voice note is converted to Ogg/Opus mono here (off the event loop), so a
file that cannot be decoded is a 400 now, not a failed message later.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
from typing import Any

from oxyd.http.inputs import check_fields
from oxyd.http.replies import ApiError
from oxyd.outgoing import MAX_CAPTION_CHARS, Outgoing, new_wa_id

TO_RE = re.compile(
    r"\+?[0-9]{6,15}|[0-9A-Za-z._:-]{1,64}@(s\.whatsapp\.net|g\.us|lid|broadcast|newsletter)"
)
CONTENT = ("text", "media", "location", "contact", "poll")
MEDIA_TYPES = ("image", "video", "audio", "voice", "document", "sticker")
PRESENCE_STATES = ("composing", "recording", "paused")
MAX_TEXT_CHARS = 65_536
MAX_NAME_CHARS = 256
MAX_MENTIONS = 100
MAX_EMOJI_CHARS = 32
MAX_OPTION_CHARS = 100
FIELDS: dict[str, type | tuple] = {
    "to": str,
    "text": str,
    "media": dict,
    "location": dict,
    "contact": dict,
    "poll": dict,
    "reply_to": str,
    "mentions": list,
    "link_preview": bool,
}


def bad(field: str, why: str, code: str = "invalid_field", status: int = 400) -> ApiError:
    return ApiError(status, code, f"{field}: {why}")


def jid(value: str, field: str) -> str:
    """A send target as a JID: international digits (a leading + is dropped) or a JID."""
    if not isinstance(value, str) or not TO_RE.fullmatch(value):
        raise bad(field, "must be a phone number in international format or a JID")
    value = value.lstrip("+")
    return value if "@" in value else f"{value}@s.whatsapp.net"


def kind_of(body: dict[str, Any]) -> str:
    given = [k for k in CONTENT if body.get(k) is not None]
    if not given:
        raise bad("text", f"is required (or one of {', '.join(CONTENT[1:])})", "missing_field")
    if len(given) > 1:
        raise bad(given[1], f"only one of {', '.join(CONTENT)} per message")
    return given[0]


def text_field(value: Any, field: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_chars:
        raise bad(field, f"must be 1 to {max_chars} characters")
    return value


async def parse(body: dict[str, Any], max_media_bytes: int) -> Outgoing:
    """The queued form of a send request (media decoded; reply_to still a bare id)."""
    check_fields(body, FIELDS, required=("to",))
    chat = jid(body["to"], "to")
    kind = kind_of(body)
    out: dict[str, Any] = {}
    data: bytes | None = None
    if kind == "text":
        out["text"] = text_field(body["text"], "text")
        out["link_preview"] = bool(body.get("link_preview"))
    elif kind == "media":
        kind, out, data = await _media(body["media"], max_media_bytes)
    elif kind == "location":
        out = _location(body["location"])
    elif kind == "contact":
        out = _contact(body["contact"])
    else:
        out = _poll(body["poll"])
    if body.get("link_preview") is not None and kind != "text":
        raise bad("link_preview", "only applies to text")
    if body.get("mentions") is not None:
        mentions = body["mentions"]
        if len(mentions) > MAX_MENTIONS:
            raise bad("mentions", f"at most {MAX_MENTIONS} JIDs")
        out["mentions"] = [jid(v, f"mentions[{i}]") for i, v in enumerate(mentions)]
    if body.get("reply_to") is not None:
        out["reply_to"] = {"id": text_field(body["reply_to"], "reply_to", 128)}
    return Outgoing(new_wa_id(), chat, kind, out, data)


async def _media(raw: dict[str, Any], max_bytes: int) -> tuple[str, dict[str, Any], bytes]:
    allowed = {"type": str, "data_b64": str, "caption": str, "filename": str, "mime": str}
    check_fields(raw, allowed, ("type", "data_b64"), prefix="media.")
    kind = raw["type"]
    if kind not in MEDIA_TYPES:
        raise bad("media.type", f"must be one of {list(MEDIA_TYPES)}")
    if len(raw["data_b64"]) > max_bytes * 4 // 3 + 8:
        raise bad("media", f"larger than {max_bytes} bytes", "media_too_large", 413)
    try:
        data = base64.b64decode(raw["data_b64"], validate=True)
    except (binascii.Error, ValueError):
        raise bad("media.data_b64", "is not valid base64") from None
    if not data:
        raise bad("media.data_b64", "is empty")
    if len(data) > max_bytes:
        raise bad("media", f"larger than {max_bytes} bytes", "media_too_large", 413)
    out: dict[str, Any] = {"mime": raw.get("mime"), "filename": None, "caption": None}
    caption = raw.get("caption")
    if caption is not None:
        if kind in ("audio", "voice", "sticker"):
            raise bad("media.caption", f"a {kind} has no caption")
        out["caption"] = text_field(caption, "media.caption", MAX_CAPTION_CHARS)
    filename = raw.get("filename")
    if filename is not None:
        # A name shown to the recipient, never a path we read.
        out["filename"] = filename.replace("/", "_").replace("\\", "_")[:255] or None
    if kind == "sticker":
        if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
            raise bad("media.data_b64", "a sticker must be a WebP image")
        out["mime"] = "image/webp"
    elif kind == "voice":
        from oxyd import voice  # PyAV loads FFmpeg: only when a voice note is sent

        try:
            note = await asyncio.to_thread(voice.to_voice_note, data)
        except voice.NotAudio as e:
            raise bad("media.data_b64", f"not an audio file oxyd can convert ({e})") from None
        data = note.data
        out.update(
            mime=voice.MIME,
            duration_s=note.duration_s,
            waveform_b64=base64.b64encode(note.waveform).decode(),
        )
    elif out["mime"] is None:
        out["mime"] = _sniff(data, kind)
    return kind, out, data


def _sniff(data: bytes, kind: str) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"%PDF":
        return "application/pdf"
    if data[:4] == b"OggS":
        return "audio/ogg"
    if data[4:8] == b"ftyp":
        return "video/mp4" if kind == "video" else "audio/mp4"
    return {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/mpeg"}.get(
        kind, "application/octet-stream"
    )


def _number(raw: dict[str, Any], key: str, limit: float, prefix: str) -> float:
    v = raw.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad(f"{prefix}{key}", "must be a number")
    if not -limit <= v <= limit:
        raise bad(f"{prefix}{key}", f"must be between -{limit:g} and {limit:g}")
    return float(v)


def _location(raw: dict[str, Any]) -> dict[str, Any]:
    allowed = {"lat": (int, float), "lng": (int, float), "name": str, "address": str}
    check_fields(raw, allowed, ("lat", "lng"), prefix="location.")
    out: dict[str, Any] = {
        "lat": _number(raw, "lat", 90, "location."),
        "lng": _number(raw, "lng", 180, "location."),
    }
    for key in ("name", "address"):
        if raw.get(key) is not None:
            out[key] = text_field(raw[key], f"location.{key}", MAX_NAME_CHARS)
    return out


def _contact(raw: dict[str, Any]) -> dict[str, Any]:
    check_fields(raw, {"name": str, "phone": str}, ("name", "phone"), prefix="contact.")
    name = text_field(raw["name"], "contact.name", MAX_NAME_CHARS)
    phone = re.sub(r"[\s()-]", "", raw["phone"])
    if not re.fullmatch(r"\+?[0-9]{6,20}", phone):
        raise bad("contact.phone", "must be a phone number in international format")
    if any(c in name for c in "\r\n;"):
        raise bad("contact.name", "must not contain line breaks or ';'")
    return {"name": name, "phone": phone.lstrip("+")}


def _poll(raw: dict[str, Any]) -> dict[str, Any]:
    check_fields(
        raw, {"question": str, "options": list, "multiple": bool}, ("question", "options"), "poll."
    )
    options = raw["options"]
    if not 2 <= len(options) <= 12:
        raise bad("poll.options", "must list 2 to 12 options")
    for i, opt in enumerate(options):
        text_field(opt, f"poll.options[{i}]", MAX_OPTION_CHARS)
    if len(set(options)) != len(options):
        raise bad("poll.options", "must not repeat an option")
    return {
        "question": text_field(raw["question"], "poll.question", MAX_NAME_CHARS),
        "options": list(options),
        "multiple": bool(raw.get("multiple")),
    }


def emoji(body: dict[str, Any]) -> str:
    check_fields(body, {"emoji": str}, ("emoji",))
    value = body["emoji"]
    if len(value) > MAX_EMOJI_CHARS or value.strip() != value:
        raise bad("emoji", f'must be one emoji (at most {MAX_EMOJI_CHARS} characters) or ""')
    return value


def presence_state(body: dict[str, Any]) -> str:
    check_fields(body, {"state": str}, ("state",))
    if body["state"] not in PRESENCE_STATES:
        raise bad("state", f"must be one of {list(PRESENCE_STATES)}")
    return body["state"]
