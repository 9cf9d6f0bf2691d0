"""Simulate actions on a session: messages and receipts arriving, drops, stalls, mutes, the
endings that need a person (logout, replace, ban, outdated) and history syncs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from oxyd import model as m
from oxyd.simulator import media as sim_media
from oxyd.simulator.actions import SimulationError, field

if TYPE_CHECKING:
    from oxyd.simulator.engine import SimulatorClient

MAX_COUNT = 100_000
# WhatsApp acknowledges a few ids per receipt; a list this long is a request built to hurt.
MAX_RECEIPT_IDS = 1000
HISTORY_CHUNK = 5000  # messages per simulated history blob
DELIVER_CHUNK = 1000  # events handed to a client between two turns of the event loop


def _jid(value: str) -> str:
    return value if "@" in value else f"{value}@s.whatsapp.net"


async def _a_message(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    chat = field(a, "chat", str, required=True)
    media = None
    if a.get("media") is not None:
        try:
            req = sim_media.parse_request(a["media"])
        except sim_media.MediaRequestError as e:
            raise SimulationError(str(e)) from None
    text = field(a, "text", str, required=a.get("media") is None)
    expired = field(a, "expired", bool, default=False)
    count = field(a, "count", int, default=1)
    if not 1 <= count <= MAX_COUNT:
        raise SimulationError(f"count: must be between 1 and {MAX_COUNT}")
    wa_id = field(a, "id", str)
    from_me = field(a, "from_me", bool, default=False)
    if a.get("media") is not None:
        media = await sim_media.build_media(c.engine.cdn, c.tenant_id, req, expired)
        text = media.caption
    dev = await c._load()
    chat = _jid(chat)
    group = chat.endswith("@g.us")
    sender = dev["jid"] if from_me else ("15550000001@s.whatsapp.net" if group else chat)
    now = c.engine.clock.now_ms()
    ids = []
    for i in range(count):
        if i and i % DELIVER_CHUNK == 0:
            # A client that stops receiving (back-pressure) does so in between: a timer,
            # not sleep(0), so that its wake-up chain runs before the next chunk.
            await asyncio.sleep(0.001)
        mid = wa_id or c.engine.wa_id()
        ids.append(mid)
        c._deliver(
            m.Message(
                wa_id=mid,
                chat=chat,
                sender=sender,
                from_me=from_me,
                sent_at_ms=now,
                kind="text" if media is None else req["type"],
                media=media,
                text=text if count == 1 or text is None else f"{text} {i + 1}",
                push_name=None if from_me else "Simulated Contact",
                is_group=group,
                is_broadcast=chat == "status@broadcast",
                raw=(text or "").encode()[:64],
            )
        )
    delivered = c.connected and not c.stalled and not c.muted
    return {"delivered": delivered, "ids": ids}


async def _a_receipt(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    ids = field(a, "ids", list, required=True)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise SimulationError("ids: must be a non-empty list of message ids")
    if len(ids) > MAX_RECEIPT_IDS:
        raise SimulationError(f"ids: at most {MAX_RECEIPT_IDS} message ids per receipt")
    rtype = field(a, "type", str, required=True)
    if rtype not in ("delivered", "read", "played"):
        raise SimulationError("type: must be delivered, read or played")
    by_chat: dict[str, list[str]] = {}
    for i in ids:
        chat = c.sent_chats.get(i) or _jid(field(a, "chat", str, required=True))
        by_chat.setdefault(chat, []).append(i)
    for chat, chat_ids in by_chat.items():
        c._deliver(m.Receipt(chat, chat, tuple(chat_ids), rtype, c.engine.clock.now_ms()))
    return {"receipts": len(ids)}


async def _a_disconnect(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    c._require_connected()
    c.connected = False
    c.sink(m.Disconnected())
    # whatsmeow reconnects by itself; its first retry is immediate.
    c._later(c.engine.cfg.connect_latency_ms / 1000, c._connected_or_fail)
    return {}


async def _a_fail_connects(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    count = field(a, "count", int, required=True)
    if not 0 <= count <= MAX_COUNT:
        raise SimulationError(f"count: must be between 0 and {MAX_COUNT}")
    c.fail_connects = count
    return {"fail_connects": count}


async def _a_stall(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    c._require_connected()
    c.stalled = True
    return {}


async def _a_mute(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    c._require_connected()
    c.muted = True  # events wait on the "server" until the client is rebuilt
    return {}


async def _end(c: SimulatorClient, ev: m.Event) -> dict[str, Any]:
    c._require_connected()
    c.connected = False
    c.sink(ev)
    return {}


async def _a_logout(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    out = await _end(c, m.LoggedOut("simulated: the phone unlinked this device"))
    await c._save(paired=False)  # whatsmeow deletes the device before reporting
    return out


async def _a_replace(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    return await _end(c, m.StreamReplaced())


async def _a_ban(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    expire_s = field(a, "expire_s", float, required=True)
    if not 0 <= expire_s <= 10**8:
        raise SimulationError("expire_s: must be between 0 and 100000000")
    return await _end(c, m.TemporaryBan(101, expire_s))


async def _a_outdated(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    return await _end(c, m.ClientOutdated())


async def _a_history(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    chats = field(a, "chats", int, required=True)
    per_chat = field(a, "messages", int, required=True)
    if not (0 <= chats <= 10_000 and 0 <= per_chat <= 10_000 and chats * per_chat <= 10**6):
        raise SimulationError("chats, messages: at most 10000 each and 1000000 in all")
    now = c.engine.clock.now_ms()
    msgs: list[m.Message] = []
    names: dict[str, str] = {}
    total = blobs = 0

    def flush() -> None:
        # WhatsApp sends a long history as a series of blobs; so does the simulator, and
        # each is its own transaction, not one holding the database for a million rows.
        nonlocal blobs
        blobs += 1
        sync = m.HistorySync("INITIAL_BOOTSTRAP", len(names), tuple(msgs), tuple(names.items()))
        c._deliver(sync)
        msgs.clear()
        names.clear()

    for n in range(chats):
        chat = f"1666{n:07d}@s.whatsapp.net"
        names[chat] = f"History chat {n}"
        for i in range(per_chat):
            msgs.append(
                m.Message(
                    wa_id=f"H{n:05d}{i:06d}",
                    chat=chat,
                    sender=chat,
                    from_me=False,
                    sent_at_ms=now - (per_chat - i) * 1000,
                    text=f"history message {i}",
                    from_history=True,
                )
            )
            total += 1
            if len(msgs) >= HISTORY_CHUNK:
                flush()
                if i + 1 < per_chat:  # the chat goes on in the next blob
                    names[chat] = f"History chat {n}"
    if msgs or names or not blobs:
        flush()
    return {"conversations": chats, "messages": total}


ACTIONS = {
    "message": (
        {"chat", "text", "count", "id", "from_me", "media", "expired"},
        _a_message,
    ),
    "receipt": ({"ids", "type", "chat"}, _a_receipt),
    "disconnect": (set(), _a_disconnect),
    "fail_connects": ({"count"}, _a_fail_connects),
    "stall": (set(), _a_stall),
    "mute": (set(), _a_mute),
    "logout": (set(), _a_logout),
    "replace": (set(), _a_replace),
    "ban": ({"expire_s"}, _a_ban),
    "outdated": (set(), _a_outdated),
    "history": ({"chats", "messages"}, _a_history),
}
