"""Bounded memory under back-pressure: a saturated writer pauses the engine, nothing is lost."""

import asyncio

from helpers import until
from http_helpers import Harness

from oxyd.simulator.engine import DELIVER_CHUNK
from oxyd.supervision import inbox as inbox_mod


async def test_a_saturated_writer_pauses_the_engine_and_everything_arrives_after(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(inbox_mod, "EVENTS_MAX", 3000)
    hx = await Harness.start(
        tmp_path, monkeypatch, OXYD_STORE_QUEUE_MAX="2000", OXYD_STORE_BATCH_MAX="500"
    )
    try:
        await hx.add("a")
        r = hx.app.supervisor.runners["a"]
        w = hx.app.writer
        gate = asyncio.Event()
        real_write = w._write

        async def slow_write(batch):  # a disk that stopped answering
            await gate.wait()
            return await real_write(batch)

        w._write = slow_write
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, len(r.events))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        body = {"action": "message", "chat": "15551234567", "text": "x", "count": 20_000}
        resp = await hx.req("POST", "/v1/tenants/a/simulate", json=body)
        assert resp.status == 202, await resp.text()
        await until(lambda: r.pauses >= 1, 20, "the runner pausing the engine")
        client = r.client
        assert not client.connected  # asked to stop receiving
        assert len(client.backlog) > 12_000  # kept "on the server", not in our memory
        gate.set()
        await until(lambda: r.t.messages_stored == 20_000, 60, "every message stored")
        watcher.cancel()
        # The buffer stayed near its bound (plus what a chunk or two deliver before the stop).
        assert peak <= inbox_mod.EVENTS_MAX + 2 * DELIVER_CHUNK
        assert r.t.state == "connected" and r.t.failures == 0
        assert await hx.app.store.count_messages("a") == 20_000
    finally:
        await hx.close()
