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
from oxyd.simulator import sending, session
from oxyd.simulator.actions import SimulationError
from oxyd.simulator.people import PEOPLE_ACTIONS, PeopleMixin

STATE_FILE = "simulator.json"
QR_ROTATE_MS = 20_000
DELIVER_CHUNK = session.DELIVER_CHUNK  # events handed to a client per turn of the loop


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


_ACTIONS = {
    **session.ACTIONS,
    **PEOPLE_ACTIONS,
    **sending.ACTIONS,
}
