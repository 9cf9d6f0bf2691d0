"""Keyset cursors of the paged lists (messages, chats, people): opaque to clients, exact in
shape (the API publishes the pattern)."""

from __future__ import annotations

import re
from typing import Any

# Cursors are keyset positions: parts joined by ".", an int in decimal, a str as the hex of its
# UTF-8. Every string of the right shape is a position (the API publishes the exact pattern,
# e.g. CURSOR_INT_INT), so a client can only get a 400 for a cursor of the wrong shape.
CURSOR_INT = r"-?[0-9]{1,18}"
CURSOR_STR = r"([0-9a-f]{2}){0,512}"


def encode_cursor(*parts: int | str) -> str:
    return ".".join(str(p) if isinstance(p, int) else p.encode().hex() for p in parts)


def decode_cursor(cursor: str, kinds: tuple[type, ...]) -> list[Any]:
    """The parts, by `kinds` (int or str); ValueError for anything of another shape."""
    pieces = cursor.split(".")
    if len(pieces) != len(kinds):
        raise ValueError("malformed cursor")
    out: list[Any] = []
    for piece, kind in zip(pieces, kinds, strict=True):
        if kind is int:
            if not re.fullmatch(CURSOR_INT, piece):
                raise ValueError("malformed cursor")
            out.append(int(piece))
        else:
            if not re.fullmatch(CURSOR_STR, piece):
                raise ValueError("malformed cursor")
            out.append(bytes.fromhex(piece).decode("utf-8", "replace"))
    return out


MESSAGES_CURSOR = (int, int)  # (sent_at_ms, row id) of the last message shown
CHATS_CURSOR = (int, str)  # (last_message_ms, jid) of the last chat shown


def cursor_pattern(*kinds: type) -> str:
    return "^" + r"\.".join(CURSOR_INT if k is int else CURSOR_STR for k in kinds) + "$"
