"""A simulated WhatsApp engine: try oxyd without a phone, test webhook consumers, load-test.

It behaves as whatsmeow reports things: a drop (`Disconnected`) is followed by the library's
own reconnect; a logout empties the device store; a stalled connection stays "connected" while
heartbeats fail and nothing arrives; a muted one answers its heartbeats while no event arrives
(neonize's hazard: event marshalling fails, the client stays logged in); messages sent to a
device that is not receiving wait on the "server" and arrive after the next connect, as
WhatsApp's offline queue does.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from pathlib import Path
from typing import Any

from oxyd import datadir
from oxyd import model as m
from oxyd.clock import Clock
from oxyd.config import SimulatorConfig
from oxyd.engine import EngineError, NotConnected, Sink
from oxyd.outgoing import Outgoing, SendResult
from oxyd.simulator import media as sim_media
from oxyd.simulator import sending
from oxyd.simulator.actions import SimulationError
from oxyd.simulator.actions import field as _field
from oxyd.simulator.people import PEOPLE_ACTIONS, PeopleMixin

STATE_FILE = "simulator.json"
QR_ROTATE_MS = 20_000
MAX_COUNT = 100_000
# WhatsApp acknowledges a few ids per receipt; a list this long is a request built to hurt.
MAX_RECEIPT_IDS = 1000
HISTORY_CHUNK = 5000  # messages per simulated history blob
DELIVER_CHUNK = 1000  # events handed to a client between two turns of the event loop


def _jid(value: str) -> str:
    return value if "@" in value else f"{value}@s.whatsapp.net"


class SimulatorEngine:
    name = "simulator"

    def __init__(self, data_dir: Path, cfg: SimulatorConfig, clock: Clock) -> None:
        self.data_dir = data_dir
        self.cfg = cfg
        self.clock = clock
        self.clients: dict[str, SimulatorClient] = {}
        # Message ids need to be unique, not unpredictable: os.urandom per message was an
        # eighth of a load test's CPU.
        self._ids = random.Random(secrets.randbits(128))
        self.cdn = sim_media.SimulatedCdn(data_dir, cfg.cdn_bytes_per_s)

    def wa_id(self) -> str:
        return f"3EB0{self._ids.getrandbits(64):016X}"

    def client(self, tenant_id: str, sink: Sink) -> SimulatorClient:
        c = SimulatorClient(self, tenant_id, sink)
        self.clients[tenant_id] = c
        return c

    async def close(self) -> None:
        for c in self.clients.values():
            await c.stop()
        await self.cdn.close()


class SimulatorClient(PeopleMixin):
    def __init__(self, engine: SimulatorEngine, tenant_id: str, sink: Sink) -> None:
        self.engine = engine
        self.tenant_id = tenant_id
        self.sink = sink
        self.path = datadir.tenant_dir(engine.data_dir, tenant_id) / STATE_FILE
        self.connected = False
        self.stalled = False
        self.muted = False
        self.fail_connects = 0
        self.backlog: list[m.Event] = []
        self.sent_chats: dict[str, str] = {}
        self._device: dict[str, Any] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._session = 0  # bumped by stop(): timers of an old session never emit
        self._people_init()
        self.sent_log = sending.SentLog(self.path.parent / sending.SENT_LOG)
        self.offline = False
        self.reconnect_pending = False
        self.read_marks: list[dict[str, Any]] = []
        self.presences: list[dict[str, Any]] = []
        # send_mode lose_answers (simulator/sending.py): sends wait on it while set.
        self.answers_lost: asyncio.Future[None] | None = None

    @property
    def reuses_message_ids(self) -> bool:
        """True (as WhatsApp's own clients) unless send_mode new_ids made this client behave
        like neonize 0.5.2, which cannot choose the id (kept in the device store)."""
        return not (self._device or {}).get("new_ids")

    # ---- device store ----

    async def _load(self) -> dict[str, Any]:
        if self._device is None:
            self._device = await asyncio.to_thread(self._read_or_create)
        return self._device

    def _read_or_create(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            # A new simulator tenant starts paired, like a phone that was just linked.
            dev = {
                "paired": True,
                "jid": f"1555{abs(hash(self.tenant_id)) % 10**7:07d}@s.whatsapp.net",
                "push_name": f"Sim {self.tenant_id}",
            }
            self._write(dev)
            return dev
        except (OSError, ValueError) as e:
            raise EngineError(f"simulated device store unreadable: {e}") from e

    def _write(self, dev: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        datadir.write_private(self.path, json.dumps(dev))

    async def _save(self, **changes: Any) -> None:
        dev = {**await self._load(), **changes}
        self._device = dev
        await asyncio.to_thread(self._write, dev)

    # ---- Client protocol ----

    async def is_paired(self) -> bool:
        return bool((await self._load()).get("paired"))

    async def connect(self) -> None:
        dev = await self._load()
        if not dev.get("paired"):
            raise EngineError("device store is empty: pair first")
        self._later(self.engine.cfg.connect_latency_ms / 1000, self._connected_or_fail)

    def _connected_or_fail(self) -> None:
        if self.fail_connects > 0:
            self.fail_connects -= 1
            self.sink(m.ConnectFailure(503, "simulated connect failure"))
            return
        if self.offline:
            self.reconnect_pending = True  # the network is down: connects once it is back
            return
        self.connected, self.stalled, self.muted = True, False, False
        dev = self._device or {}
        self.sink(m.Connected(dev.get("jid"), dev.get("push_name")))
        self._people_connected()
        self._later(0, self._drain_backlog)

    async def _drain_backlog(self) -> None:
        """The offline queue, handed over in chunks as a server would: a client that stops
        receiving (back-pressure) in between leaves the rest queued here, in order."""
        delivered = 0
        while self.backlog and self.connected and not self.stalled and not self.muted:
            chunk = self.backlog[:DELIVER_CHUNK]
            del self.backlog[:DELIVER_CHUNK]
            for ev in chunk:
                self.sink(ev)
            delivered += len(chunk)
            await asyncio.sleep(0.001)
        if not self.backlog and self.connected:
            self.sink(m.OfflineSyncCompleted(delivered))

    async def heartbeat(self) -> bool:
        return self.connected and not self.stalled

    async def send(self, out: Outgoing) -> SendResult:
        return await sending.send(self, out)

    async def mark_read(self, chat: str, ids: list[str], sender: str | None) -> None:
        await sending.mark_read(self, chat, ids, sender)

    async def chat_presence(self, chat: str, state: str) -> None:
        await sending.presence(self, chat, state)

    async def download_media(self, ref: str, dest: str, max_bytes: int) -> dict:
        self._require_connected()
        return await self.engine.cdn.download(self.tenant_id, ref, dest, max_bytes)

    async def request_media_reupload(
        self, ref: str, chat: str, sender: str, wa_id: str, from_me: bool
    ) -> str:
        self._require_connected()
        return await self.engine.cdn.reupload(self.tenant_id, ref)

    async def pair(self, phone: str | None) -> None:
        if await self.is_paired():
            raise EngineError("already paired")
        now = self.engine.clock.now_ms()
        self.sink(m.PairQR("SIM," + secrets.token_urlsafe(24), now + QR_ROTATE_MS))
        if phone:
            code = secrets.token_hex(4).upper()
            self.sink(m.PairCode(f"{code[:4]}-{code[4:]}", now + QR_ROTATE_MS * 8))

        async def complete() -> None:
            dev = {
                "paired": True,
                "jid": f"{phone or '1555' + secrets.token_hex(3)}@s.whatsapp.net",
                "push_name": f"Sim {self.tenant_id}",
            }
            await self._save(**dev)
            self.sink(m.PairSuccess(dev["jid"], dev["push_name"]))

        self._later(self.engine.cfg.pair_after_ms / 1000, complete)

    async def logout(self) -> None:
        await self.stop()
        await self._save(paired=False)

    async def stop(self) -> None:
        self._session += 1
        self.connected = self.stalled = self.muted = self.reconnect_pending = False
        if self.answers_lost is not None:  # sends waiting for a lost answer end (unknown)
            lost, self.answers_lost = self.answers_lost, None
            lost.set_result(None)
        for t in list(self._tasks):
            t.cancel()
        self._tasks.clear()

    async def remove(self) -> None:
        await self.stop()
        await asyncio.to_thread(self.path.unlink, True)
        self._device = None

    # ---- timers ----

    def _later(self, delay_s: float, fn) -> None:
        session = self._session

        async def run() -> None:
            if delay_s > 0:
                await self.engine.clock.sleep(delay_s)
            if session == self._session:
                out = fn()
                if asyncio.iscoroutine(out):
                    await out

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the simulate route ----

    async def simulate(self, action: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(action, dict):
            raise SimulationError("body: must be a JSON object")
        name = action.get("action")
        handler = _ACTIONS.get(name) if isinstance(name, str) else None
        if handler is None:
            raise SimulationError(f"action: must be one of {sorted(_ACTIONS)}")
        fields, fn = handler
        for key in action:
            if key != "action" and key not in fields:
                raise SimulationError(f"{key}: unknown field for action {name!r}")
        return await fn(self, action)

    def _deliver(self, ev: m.Event) -> None:
        # Behind a backlog still draining, a new event waits its turn: order is kept.
        if self.connected and not self.stalled and not self.muted and not self.backlog:
            self.sink(ev)
        else:
            self.backlog.append(ev)

    def _require_connected(self) -> None:
        if not self.connected:
            raise NotConnected("simulated client is not connected")

    async def _a_message(self, a: dict[str, Any]) -> dict[str, Any]:
        chat = _field(a, "chat", str, required=True)
        media = None
        if a.get("media") is not None:
            try:
                req = sim_media.parse_request(a["media"])
            except sim_media.MediaRequestError as e:
                raise SimulationError(str(e)) from None
        text = _field(a, "text", str, required=a.get("media") is None)
        expired = _field(a, "expired", bool, default=False)
        count = _field(a, "count", int, default=1)
        if not 1 <= count <= MAX_COUNT:
            raise SimulationError(f"count: must be between 1 and {MAX_COUNT}")
        wa_id = _field(a, "id", str)
        from_me = _field(a, "from_me", bool, default=False)
        if a.get("media") is not None:
            media = await sim_media.build_media(self.engine.cdn, self.tenant_id, req, expired)
            text = media.caption
        dev = await self._load()
        chat = _jid(chat)
        group = chat.endswith("@g.us")
        sender = dev["jid"] if from_me else ("15550000001@s.whatsapp.net" if group else chat)
        now = self.engine.clock.now_ms()
        ids = []
        for i in range(count):
            if i and i % DELIVER_CHUNK == 0:
                # A client that stops receiving (back-pressure) does so in between: a timer,
                # not sleep(0), so that its wake-up chain runs before the next chunk.
                await asyncio.sleep(0.001)
            mid = wa_id or self.engine.wa_id()
            ids.append(mid)
            self._deliver(
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
        delivered = self.connected and not self.stalled and not self.muted
        return {"delivered": delivered, "ids": ids}

    async def _a_receipt(self, a: dict[str, Any]) -> dict[str, Any]:
        ids = _field(a, "ids", list, required=True)
        if not ids or not all(isinstance(i, str) for i in ids):
            raise SimulationError("ids: must be a non-empty list of message ids")
        if len(ids) > MAX_RECEIPT_IDS:
            raise SimulationError(f"ids: at most {MAX_RECEIPT_IDS} message ids per receipt")
        rtype = _field(a, "type", str, required=True)
        if rtype not in ("delivered", "read", "played"):
            raise SimulationError("type: must be delivered, read or played")
        by_chat: dict[str, list[str]] = {}
        for i in ids:
            chat = self.sent_chats.get(i) or _jid(_field(a, "chat", str, required=True))
            by_chat.setdefault(chat, []).append(i)
        for chat, chat_ids in by_chat.items():
            self._deliver(m.Receipt(chat, chat, tuple(chat_ids), rtype, self.engine.clock.now_ms()))
        return {"receipts": len(ids)}

    async def _a_disconnect(self, a: dict[str, Any]) -> dict[str, Any]:
        self._require_connected()
        self.connected = False
        self.sink(m.Disconnected())
        # whatsmeow reconnects by itself; its first retry is immediate.
        self._later(self.engine.cfg.connect_latency_ms / 1000, self._connected_or_fail)
        return {}

    async def _a_fail_connects(self, a: dict[str, Any]) -> dict[str, Any]:
        count = _field(a, "count", int, required=True)
        if not 0 <= count <= MAX_COUNT:
            raise SimulationError(f"count: must be between 0 and {MAX_COUNT}")
        self.fail_connects = count
        return {"fail_connects": count}

    async def _a_stall(self, a: dict[str, Any]) -> dict[str, Any]:
        self._require_connected()
        self.stalled = True
        return {}

    async def _a_mute(self, a: dict[str, Any]) -> dict[str, Any]:
        self._require_connected()
        self.muted = True  # events wait on the "server" until the client is rebuilt
        return {}

    async def _end(self, ev: m.Event) -> dict[str, Any]:
        self._require_connected()
        self.connected = False
        self.sink(ev)
        return {}

    async def _a_logout(self, a: dict[str, Any]) -> dict[str, Any]:
        out = await self._end(m.LoggedOut("simulated: the phone unlinked this device"))
        await self._save(paired=False)  # whatsmeow deletes the device before reporting
        return out

    async def _a_replace(self, a: dict[str, Any]) -> dict[str, Any]:
        return await self._end(m.StreamReplaced())

    async def _a_ban(self, a: dict[str, Any]) -> dict[str, Any]:
        expire_s = _field(a, "expire_s", float, required=True)
        if not 0 <= expire_s <= 10**8:
            raise SimulationError("expire_s: must be between 0 and 100000000")
        return await self._end(m.TemporaryBan(101, expire_s))

    async def _a_outdated(self, a: dict[str, Any]) -> dict[str, Any]:
        return await self._end(m.ClientOutdated())

    async def _a_history(self, a: dict[str, Any]) -> dict[str, Any]:
        chats = _field(a, "chats", int, required=True)
        per_chat = _field(a, "messages", int, required=True)
        if not (0 <= chats <= 10_000 and 0 <= per_chat <= 10_000 and chats * per_chat <= 10**6):
            raise SimulationError("chats, messages: at most 10000 each and 1000000 in all")
        now = self.engine.clock.now_ms()
        msgs: list[m.Message] = []
        names: dict[str, str] = {}
        total = blobs = 0

        def flush() -> None:
            # WhatsApp sends a long history as a series of blobs; so does the simulator, and
            # each is its own transaction, not one holding the database for a million rows.
            nonlocal blobs
            blobs += 1
            sync = m.HistorySync("INITIAL_BOOTSTRAP", len(names), tuple(msgs), tuple(names.items()))
            self._deliver(sync)
            msgs.clear()
            names.clear()

        for c in range(chats):
            chat = f"1666{c:07d}@s.whatsapp.net"
            names[chat] = f"History chat {c}"
            for i in range(per_chat):
                msgs.append(
                    m.Message(
                        wa_id=f"H{c:05d}{i:06d}",
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
                        names[chat] = f"History chat {c}"
        if msgs or names or not blobs:
            flush()
        return {"conversations": chats, "messages": total}


_ACTIONS = {
    "message": (
        {"chat", "text", "count", "id", "from_me", "media", "expired"},
        SimulatorClient._a_message,
    ),
    "receipt": ({"ids", "type", "chat"}, SimulatorClient._a_receipt),
    "disconnect": (set(), SimulatorClient._a_disconnect),
    "fail_connects": ({"count"}, SimulatorClient._a_fail_connects),
    "stall": (set(), SimulatorClient._a_stall),
    "mute": (set(), SimulatorClient._a_mute),
    "logout": (set(), SimulatorClient._a_logout),
    "replace": (set(), SimulatorClient._a_replace),
    "ban": ({"expire_s"}, SimulatorClient._a_ban),
    "outdated": (set(), SimulatorClient._a_outdated),
    "history": ({"chats", "messages"}, SimulatorClient._a_history),
    **PEOPLE_ACTIONS,
    **sending.ACTIONS,
}
