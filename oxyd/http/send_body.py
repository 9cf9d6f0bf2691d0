"""The bodies of the sending routes (design §12): their JSON Schemas, which operation.py validates
with and openapi.py publishes, and what no schema can say, done after validation.

A send has `to` and exactly one of text, media, location, contact, poll (`oneOf`); every error
names its field. Media arrives as base64 in the JSON body; after the schema, only content is left
to check: a sticker must be a WebP image, and a voice note is converted to Ogg/Opus mono here (off
the event loop), so a file that cannot be decoded is a 400 now, not a failed message later.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

from oxyd.http import shapes as s
from oxyd.http.replies import ApiError
from oxyd.outgoing import MAX_CAPTION_CHARS, MEDIA_KINDS, Outgoing, new_wa_id

TO_PATTERN = (
    r"^(\+?[0-9]{6,15}|[0-9A-Za-z._:-]{1,64}@(s\.whatsapp\.net|g\.us|lid|broadcast|newsletter))$"
)
CONTENT = ("text", "media", "location", "contact", "poll")
MEDIA_TYPES = MEDIA_KINDS
PRESENCE_STATES = ("composing", "recording", "paused")
NO_CAPTION = ("audio", "voice", "sticker")
MAX_TEXT_CHARS = 65_536
MAX_NAME_CHARS = 256
MAX_MENTIONS = 100
MAX_EMOJI_CHARS = 32
MAX_OPTION_CHARS = 100
MAX_REF_CHARS = 128
# What a contact's phone may hold around its digits (dropped before the digits are checked).
PHONE_SEPARATORS = f"[{s.SPACE}()-]"

JID = s.string(
    pattern=TO_PATTERN, description="must be a phone number in international format or a JID"
)
TEXT = s.text(MAX_TEXT_CHARS)
NAME = s.text(MAX_NAME_CHARS)
MEDIA = s.obj(
    {
        "type": s.string(enum=MEDIA_TYPES),
        "data_b64": s.base64(),
        "mime": s.nullable(s.STR),
        "filename": s.nullable(s.string(description="the name shown; / and \\ become _")),
        "caption": s.nullable(s.text(MAX_CAPTION_CHARS)),
    },
    ("type", "data_b64"),
)
MEDIA["allOf"] = [
    {
        "if": {"required": ["type"], "properties": {"type": {"enum": list(NO_CAPTION)}}},
        "then": {
            "properties": {
                "caption": s.forbidden("must be left out: audio, voice and sticker have none")
            }
        },
    }
]
LOCATION = s.obj(
    {
        "lat": s.number(-90, 90),
        "lng": s.number(-180, 180),
        "name": s.nullable(NAME),
        "address": s.nullable(NAME),
    },
    ("lat", "lng"),
)
CONTACT = s.obj(
    {
        "name": s.text(
            MAX_NAME_CHARS,
            pattern=f"^[^\r\n;]*[^{s.SPACE};][^\r\n;]*$",
            description=f"must be 1 to {MAX_NAME_CHARS} characters, no line breaks or ';'",
        ),
        "phone": s.string(
            pattern=f"^{PHONE_SEPARATORS}*\\+?({PHONE_SEPARATORS}*[0-9]){{6,20}}"
            f"{PHONE_SEPARATORS}*$",
            description="must be a phone number in international format",
        ),
    },
    ("name", "phone"),
)
POLL = s.obj(
    {
        "question": NAME,
        "options": s.array(s.text(MAX_OPTION_CHARS), min_items=2, max_items=12, unique=True),
        "multiple": s.nullable(s.BOOL),
    },
    ("question", "options"),
)
_KINDS = {"text": TEXT, "media": MEDIA, "location": LOCATION, "contact": CONTACT, "poll": POLL}
SEND = s.obj(
    {
        "to": JID,
        **{kind: s.nullable(schema) for kind, schema in _KINDS.items()},
        "reply_to": s.nullable(
            s.text(MAX_REF_CHARS, description="must be the id of a message in the same chat")
        ),
        "mentions": s.nullable(s.array(JID, max_items=MAX_MENTIONS)),
        "link_preview": s.nullable(s.BOOL),
    },
    ("to",),
    description="`to` and exactly one of text, media, location, contact, poll",
)
# Exactly one kind: a kind given as null counts as left out.
SEND["oneOf"] = [
    {"required": [kind], "properties": {kind: {"type": schema["type"]}}}
    for kind, schema in _KINDS.items()
]
SEND["allOf"] = [
    {
        "if": {"not": {"required": ["text"], "properties": {"text": {"type": "string"}}}},
        "then": {"properties": {"link_preview": s.forbidden("must be left out: it is for text")}},
    }
]
EDIT = s.obj({"text": TEXT}, ("text",))
REACTION = s.obj(
    {
        "emoji": s.string(
            max_length=MAX_EMOJI_CHARS,
            pattern=f"^([^{s.SPACE}]([\\s\\S]*[^{s.SPACE}])?)?$",
            description=f'must be one emoji (at most {MAX_EMOJI_CHARS} characters) or ""',
        )
    },
    ("emoji",),
)
READ = s.obj({"up_to": s.nullable(s.string(description="a received message's id"))})
PRESENCE = s.obj({"state": s.string(enum=PRESENCE_STATES)}, ("state",))


def bad(field: str, why: str, code: str = "invalid_field", status: int = 400) -> ApiError:
    return ApiError(status, code, f"{field}: {why}")


def jid(value: str) -> str:
    """A send target (valid by JID) as a JID: a leading + is dropped, digits get the server."""
    value = value.lstrip("+")
    return value if "@" in value else f"{value}@s.whatsapp.net"


def precheck(max_body_bytes: int, max_media_bytes: int, body: dict[str, Any], size: int) -> None:
    """Before the schema: only a body carrying media may exceed http.max_body_bytes (a 2 MiB text
    is 413, not 400), and oversized media is 413 before its base64 is read."""
    media = body.get("media")
    if size > max_body_bytes and not isinstance(media, dict):
        raise ApiError(413, "body_too_large", f"the body exceeds {max_body_bytes} bytes")
    if isinstance(media, dict) and isinstance(media.get("data_b64"), str):
        if len(media["data_b64"]) > max_media_bytes * 4 // 3 + 8:
            raise bad("media", f"larger than {max_media_bytes} bytes", "media_too_large", 413)


async def parse(body: dict[str, Any], max_media_bytes: int) -> Outgoing:
    """The queued form of a validated send (media decoded; reply_to still a bare id)."""
    kind = next(k for k in CONTENT if body.get(k) is not None)
    out: dict[str, Any]
    data: bytes | None = None
    if kind == "text":
        out = {"text": body["text"], "link_preview": bool(body.get("link_preview"))}
    elif kind == "media":
        kind, out, data = await _media(body["media"], max_media_bytes)
    elif kind == "location":
        out = _location(body["location"])
    elif kind == "contact":
        out = _contact(body["contact"])
    else:
        poll = body["poll"]
        multiple = bool(poll.get("multiple"))
        out = {"question": poll["question"], "options": list(poll["options"]), "multiple": multiple}
    if body.get("mentions") is not None:
        out["mentions"] = [jid(v) for v in body["mentions"]]
    if body.get("reply_to") is not None:
        out["reply_to"] = {"id": body["reply_to"]}
    return Outgoing(new_wa_id(), jid(body["to"]), kind, out, data)


async def _media(raw: dict[str, Any], max_bytes: int) -> tuple[str, dict[str, Any], bytes]:
    kind = raw["type"]
    data = base64.b64decode(raw["data_b64"], validate=True)  # the schema's pattern: valid
    if len(data) > max_bytes:
        raise bad("media", f"larger than {max_bytes} bytes", "media_too_large", 413)
    out: dict[str, Any] = {"mime": raw.get("mime"), "filename": None, "caption": None}
    if raw.get("caption") is not None:
        out["caption"] = raw["caption"]
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


def _location(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"lat": float(raw["lat"]), "lng": float(raw["lng"])}
    for key in ("name", "address"):
        if raw.get(key) is not None:
            out[key] = raw[key]
    return out


def _contact(raw: dict[str, Any]) -> dict[str, Any]:
    phone = re.sub(PHONE_SEPARATORS, "", raw["phone"])
    return {"name": raw["name"], "phone": phone.lstrip("+")}
