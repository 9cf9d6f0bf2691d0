"""The supervisor with the real neonize engine: a real connect fails offline, oxyd backs off
and retries, and the daemon stays responsive."""

from __future__ import annotations

import pytest
from helpers import config, until

from oxyd import app as oxyd_app
from oxyd.model import State

neonize_engine = pytest.importorskip("oxyd.neonize.engine")
neonize_engine.import_neonize()


@pytest.fixture(autouse=True)
def neonize_loop_reset():
    from neonize.aioze import events

    events.event_global_loop = None
    yield
    events.event_global_loop = None


class OfflineNeonize(neonize_engine.NeonizeEngine):
    """The real engine, whose clients report a device in their (empty) store: the supervisor
    records it, and whatsmeow then really dials, which fails offline (no network here)."""

    def client(self, tenant_id, sink):
        c = super().client(tenant_id, sink)

        async def device():
            c.store_path.parent.mkdir(parents=True, exist_ok=True)
            c.store_path.touch()
            return ("4915550001234@s.whatsapp.net", None)

        c.device = device
        return c


async def test_real_connect_offline_backs_off_and_retries(tmp_path):
    cfg = config(
        tmp_path,
        SUPERVISOR_BACKOFF_BASE_S="0.05",
        SUPERVISOR_BACKOFF_CAP_S="0.2",
        SUPERVISOR_MAX_FAILURES="1000",
        SUPERVISOR_STOP_GRACE_S="5",
    )
    engine = OfflineNeonize(cfg.data_dir, stop_grace_s=5)
    app = await oxyd_app.build(cfg, engines={"neonize": engine})
    await oxyd_app.start(app)
    try:
        await app.supervisor.add("real", "neonize")
        r = app.supervisor.runners["real"]
        await until(lambda: r.t.failures >= 3, 60, "three failed real connects")
        assert r.t.state in (State.BACKOFF, State.CONNECTING)
        assert (await app.store.tenant("real")).jid == "4915550001234@s.whatsapp.net"
        assert r.t.last_error and "client ended" in r.t.last_error
        history = [h["state"] for h in await app.store.state_history("real")]
        assert history.count("backoff") >= 2 and history.count("connecting") >= 3
        assert await app.store.ping()  # the loop and the database still answer
    finally:
        assert await oxyd_app.stop(app)  # clean: no neonize thread left stuck
