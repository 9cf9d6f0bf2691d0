"""A runner waiting for room in a starved writer never holds a connect slot.

The writer here is the real one, not started: exactly what a writer starved of CPU looks like
to the runners (it takes nothing). With one connect slot, a runner that kept its slot while it
waited would keep every other tenant in `connecting` (a soak once left 21 tenants there).
"""

from helpers import advance_until, config, until

from oxyd import app as oxyd_app
from oxyd import model as m
from oxyd.clock import FakeClock
from oxyd.model import State
from oxyd.simulator.engine import SimulatorEngine

QUEUE_MAX = 10
FAST = {
    "SUPERVISOR_CONNECT_CONCURRENCY": "1",
    "SUPERVISOR_CONNECT_TIMEOUT_S": "30",
    "SUPERVISOR_HEARTBEAT_S": "10",
    "STORE_QUEUE_MAX": str(QUEUE_MAX),
    "STORE_BATCH_MAX": "5",
}


def _messages(prefix: str, n: int) -> list[m.Message]:
    return [
        m.Message(
            f"{prefix}{i:04d}", "15551234567@s.whatsapp.net", "15551234567", False, 1, text="."
        )
        for i in range(n)
    ]


class EagerClient:
    """Delivers data before the outcome, as whatsmeow may (offline messages racing the
    Connected event on connect; a history sync right after a pairing)."""

    def __init__(self, sink, before: int) -> None:
        self.sink = sink
        self.before = before
        self.paired = True
        self.connects = 0

    async def is_paired(self) -> bool:
        return self.paired

    async def connect(self) -> None:
        self.connects += 1
        for ev in _messages(f"C{self.connects}-", self.before):
            self.sink(ev)
        self.sink(m.Connected("15550001111@s.whatsapp.net", "eager"))

    async def pair(self, phone: str | None) -> None:
        self.paired = True
        self.sink(m.PairSuccess("15550001111@s.whatsapp.net", "eager"))
        for ev in _messages("H", self.before):  # the history sync after a pairing
            self.sink(ev)

    async def heartbeat(self) -> bool:
        return True

    async def configure(self, settings: dict) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def logout(self) -> None:
        self.paired = False

    async def remove(self) -> None:
        pass


class EagerEngine:
    name = "eager"

    def __init__(self, before: int, paired: bool) -> None:
        self.before, self.paired = before, paired
        self.clients: dict[str, EagerClient] = {}

    def client(self, tenant_id, sink):
        c = self.clients[tenant_id] = EagerClient(sink, self.before)
        c.paired = self.paired
        return c

    async def close(self):
        pass


async def _starved_app(tmp_path, eager: EagerEngine):
    clock = FakeClock()
    cfg = config(tmp_path, **FAST)
    engines = {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock), "eager": eager}
    app = await oxyd_app.build(cfg, clock, engines)
    # oxyd_app.start without app.writer.start(): the writer takes nothing until the test says.
    await app.webhooks.start()
    await app.supervisor.start()
    return app, clock


async def _others_connect_while_starved(app, clock) -> None:
    sup = app.supervisor
    await sup.add("sim", "simulator")
    await advance_until(
        clock, lambda: sup.runners["sim"].t.state is State.CONNECTED, step_s=1, what="sim connected"
    )
    assert sup.gate.in_flight == 0


async def test_data_before_connected_gives_the_slot_back_while_the_writer_is_full(tmp_path):
    before = QUEUE_MAX + 5
    eager = EagerEngine(before, paired=True)
    app, clock = await _starved_app(tmp_path, eager)
    sup = app.supervisor
    try:
        await sup.add("eager", "eager")
        r = sup.runners["eager"]
        await until(
            lambda: app.writer.depth == QUEUE_MAX and r.events, what="eager waiting for room"
        )
        assert r.t.state is State.CONNECTING
        await _others_connect_while_starved(app, clock)
        assert r.t.state is State.CONNECTING  # still waiting for the writer, without a slot

        app.writer.start()  # the writer gets its CPU back
        await until(lambda: r.t.state is State.CONNECTED, what="eager connected")
        await until(lambda: app.writer.stats.stored == before, what="every message stored")
        assert eager.clients["eager"].connects == 1 and r.t.failures == 0
    finally:
        await oxyd_app.stop(app)


async def test_data_left_from_pairing_is_stored_before_the_connect_takes_a_slot(tmp_path):
    eager = EagerEngine(QUEUE_MAX + 5, paired=False)
    app, clock = await _starved_app(tmp_path, eager)
    sup = app.supervisor
    try:
        await sup.add("eager", "eager")
        await sup.pair("eager", None)
        r = sup.runners["eager"]
        await until(
            lambda: app.writer.depth == QUEUE_MAX and r.events, what="eager waiting for room"
        )
        await _others_connect_while_starved(app, clock)
        # A tenant whose history cannot be stored yet does not dial (its connect would only
        # add to what waits for the writer).
        assert eager.clients["eager"].connects == 0

        app.writer.start()
        await until(lambda: r.t.state is State.CONNECTED, what="eager connected")
        await until(lambda: app.writer.stats.stored == 2 * (QUEUE_MAX + 5), what="all stored")
        assert eager.clients["eager"].connects == 1
    finally:
        await oxyd_app.stop(app)
