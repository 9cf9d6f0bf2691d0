"""JIDs and times as whatsmeow gives them: `user@server` without the device part, phone or LID,
and timestamps of unknown unit. A leaf: no neonize, no oxyd imports."""

from __future__ import annotations

from typing import Any


def to_ms(ts: int) -> int:
    """Unix time of unknown unit (s, ms, us, ns) to ms. whatsmeow's units differ by event and
    neonize version; real WhatsApp times (2009 onwards) never overlap across units."""
    ts = int(ts)
    if ts <= 0:
        return 0
    if ts < 100_000_000_000:  # seconds until year 5138
        return ts * 1000
    if ts < 100_000_000_000_000:
        return ts
    if ts < 100_000_000_000_000_000:
        return ts // 1000
    return ts // 1_000_000


def jid_str(jid: Any) -> str | None:
    """A neonize JID proto as `user@server` (device dropped), None when empty."""
    if jid is None or not jid.Server:
        return None
    return f"{jid.User}@{jid.Server}" if jid.User else jid.Server


def parse_jid(text: str) -> str | None:
    """A JID string without its device part (`123:4@s.whatsapp.net` -> `123@s.whatsapp.net`)."""
    if not text or "@" not in text:
        return None
    user, server = text.rsplit("@", 1)
    return f"{user.split(':', 1)[0].split('.', 1)[0]}@{server}" if user else server


def is_lid(jid: str | None) -> bool:
    return bool(jid) and jid.endswith("@lid")


def is_pn(jid: str | None) -> bool:
    return bool(jid) and jid.endswith("@s.whatsapp.net")


def is_broadcast(chat: str | None) -> bool:
    return bool(chat) and chat.endswith("@broadcast")


def pick_phone(primary: str | None, alt: str | None) -> tuple[str | None, str | None]:
    """(jid to store, alternative form): the phone JID wins over the LID when both are known."""
    if is_lid(primary) and is_pn(alt):
        return alt, primary
    return primary, alt
