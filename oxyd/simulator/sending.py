"""The simulated server's side of sending (design §15): what it accepted, and its receipts.

- `sent_log` (`tenants/<id>/sent_log.jsonl`, persisted, in order): every message the server
  accepted from this tenant, with its WhatsApp id and kind. The server deduplicates by id, as
  WhatsApp does for a resend with the same id: this is how exactly-once sending is checked.
- Receipts for sent messages arrive like WhatsApp's: delivered, then read (played for a voice
  note), shortly after.
- `offline` / `online`: the network drops for this tenant (its session reports Disconnected
  and the library cannot reconnect; sends queue up in oxyd) and comes back.
- Recipients whose number starts with 999 are "not on WhatsApp" (a terminal failure).
- `send_mode` makes the library behave like neonize 0.5.2 for the exactly-once tests:
  `new_ids` (kept in the simulated device store, so it holds across restarts): the client
  cannot choose the message id, every attempt is a new message with the server's id (no
  dedup; the log entry keeps the queued id as `queued_id`); `lose_answers`: the server
  accepts a message, but its answer never comes (the send waits until the mode is turned
  off, or ends with SendUnknown when the session stops).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oxyd import model as m
from oxyd.engine import NotConnected, SendRejected, SendUnknown
from oxyd.outgoing import REF_KINDS, Outgoing, SendResult
from oxyd.simulator.actions import field

if TYPE_CHECKING:
    from oxyd.simulator.engine import SimulatorClient

SENT_LOG = "sent_log.jsonl"
DELIVERED_AFTER_S = 0.05
READ_AFTER_S = 0.15
MAX_LOG_ANSWER = 10_000


class SentLog:
    """The server's record of accepted messages for one tenant, appended before a send
    returns (a SIGKILL after that keeps it: the write is in the kernel's page cache)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] | None = None
        self.by_id: dict[str, dict[str, Any]] = {}

    async def load(self) -> list[dict[str, Any]]:
        if self.entries is None:
            self.entries = await asyncio.to_thread(self._read)
            self.by_id = {e["id"]: e for e in self.entries}
        return self.entries

    def _read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash mid-write was never acknowledged
        return out

    async def append(self, entry: dict[str, Any]) -> None:
        await self.load()
        await asyncio.to_thread(self._append, json.dumps(entry, separators=(",", ":")) + "\n")
        assert self.entries is not None
        self.entries.append(entry)
        self.by_id[entry["id"]] = entry

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _check_online(c: SimulatorClient) -> None:
    if not c.connected or c.stalled or c.offline:
        raise NotConnected("simulated client is not connected")


async def send(c: SimulatorClient, out: Outgoing) -> SendResult:
    _check_online(c)
    user, _, server = out.chat.partition("@")
    if not user or server not in ("s.whatsapp.net", "g.us", "lid", "broadcast", "newsletter"):
        raise SendRejected("invalid_recipient", f"{out.chat} is not a WhatsApp address")
    if server == "s.whatsapp.net" and user.startswith("999"):
        raise SendRejected("not_on_whatsapp", f"{user} is not on WhatsApp")
    await c.sent_log.load()
    wa_id = out.id
    if not c.reuses_message_ids:
        wa_id = c.engine.wa_id()  # the library chose it: a resend is another message
    else:
        seen = c.sent_log.by_id.get(out.id)
        if seen is not None:
            # A resend with the same id (after a crash or a lost answer): one message.
            return SendResult(out.id, seen["at_ms"])
    now = c.engine.clock.now_ms()
    entry: dict[str, Any] = {"id": wa_id, "chat": out.chat, "kind": out.kind, "at_ms": now}
    if wa_id != out.id:
        entry["queued_id"] = out.id
    for key in ("text", "caption", "emoji", "question", "mime", "filename", "duration_s"):
        if out.body.get(key) is not None:
            entry[key] = out.body[key]
    for key in ("ref", "reply_to"):
        if out.body.get(key):
            entry[f"{key}_id"] = out.body[key]["id"]
    if out.body.get("mentions"):
        entry["mentions"] = out.body["mentions"]
    if out.data is not None:
        entry["size"] = len(out.data)
    await c.sent_log.append(entry)
    c.sent_chats[wa_id] = out.chat
    if out.kind not in REF_KINDS:
        last = "played" if out.kind == "voice" else "read"
        for delay_s, rtype in ((DELIVERED_AFTER_S, "delivered"), (READ_AFTER_S, last)):
            c._later(delay_s, _receipt(c, out.chat, wa_id, rtype))
    if c.answers_lost is not None:
        # Accepted, and the answer is lost: wait for the mode to end or the session to stop.
        session = c._session
        await asyncio.shield(c.answers_lost)
        if c._session != session:
            raise SendUnknown("connection closed before the server answered the message send")
    return SendResult(wa_id, now)


def _receipt(c: SimulatorClient, chat: str, wa_id: str, rtype: str):
    def fire() -> None:
        c._deliver(m.Receipt(chat, chat, (wa_id,), rtype, c.engine.clock.now_ms()))

    return fire


async def mark_read(c: SimulatorClient, chat: str, ids: list[str], sender: str | None) -> None:
    _check_online(c)
    c.read_marks.append({"chat": chat, "ids": list(ids), "sender": sender})


async def presence(c: SimulatorClient, chat: str, state: str) -> None:
    _check_online(c)
    c.presences.append({"chat": chat, "state": state})


# ---- simulate actions ----


async def _a_offline(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    c.offline = True
    if c.connected:
        c.connected = False
        c.sink(m.Disconnected())  # whatsmeow now retries, and fails until the network is back
        c.reconnect_pending = True
    return {"offline": True}


async def _a_online(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    c.offline = False
    if c.reconnect_pending:
        c.reconnect_pending = False
        c._later(c.engine.cfg.connect_latency_ms / 1000, c._connected_or_fail)
    return {"offline": False}


async def _a_sent_log(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    entries = await c.sent_log.load()
    return {
        "sent": entries[-MAX_LOG_ANSWER:],
        "read_marks": c.read_marks[-100:],
        "presences": c.presences[-100:],
    }


async def _a_send_mode(c: SimulatorClient, a: dict[str, Any]) -> dict[str, Any]:
    new_ids = field(a, "new_ids", bool)
    lose = field(a, "lose_answers", bool)
    if new_ids is not None:
        await c._save(new_ids=new_ids)
    if lose is True and c.answers_lost is None:
        c.answers_lost = asyncio.get_running_loop().create_future()
    elif lose is False and c.answers_lost is not None:
        lost, c.answers_lost = c.answers_lost, None
        lost.set_result(None)  # the answers arrive now
    return {"new_ids": not c.reuses_message_ids, "lose_answers": c.answers_lost is not None}


ACTIONS = {
    "send_mode": ({"new_ids", "lose_answers"}, _a_send_mode),
    "offline": (set(), _a_offline),
    "online": (set(), _a_online),
    "sent_log": (set(), _a_sent_log),
}
