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
    from neonize_fakes import DelayProxy

    proxy = DelayProxy(0.05).__enter__()  # the dial fails at 127.0.0.1, never via DNS
    engine = OfflineNeonize(cfg.data_dir, stop_grace_s=5, proxy=proxy.url)
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
        assert proxy.connects >= 3
    finally:
        assert await oxyd_app.stop(app)  # clean: no neonize thread left stuck
        proxy.__exit__()


async def test_paired_state_lives_in_the_record_not_the_store(tmp_path, monkeypatch):
    """The daemon never opens a device store with Python's sqlite3 (that would drop Go's locks):
    a store without a record is checked once by a child; the record says the rest."""
    import sqlite3

    from neonize_fakes import DelayProxy, install_store, make_template

    real_connect = sqlite3.connect

    def guarded(database, *a, **kw):
        assert "whatsmeow" not in str(database), f"the daemon opened {database}"
        return real_connect(database, *a, **kw)

    cfg = config(tmp_path, SUPERVISOR_MAX_FAILURES="1000", SUPERVISOR_BACKOFF_BASE_S="5")
    with DelayProxy(0.1) as proxy:
        # A real store with a paired device, copied in by hand: no record of it anywhere.
        install_store(make_template(tmp_path, proxy.url), cfg.data_dir, "copied")
        monkeypatch.setattr(sqlite3, "connect", guarded)
        engine = neonize_engine.NeonizeEngine(cfg.data_dir, stop_grace_s=5, proxy=proxy.url)
        app = await oxyd_app.build(cfg, engines={"neonize": engine})
        await oxyd_app.start(app)
        try:
            r = app.supervisor.runners["copied"]
            await until(lambda: r.t.failures >= 1, 30, "a real dial through the proxy")
            assert r.t.jid == "15550001234@s.whatsapp.net" and r.t.push_name == "Fake"
            assert (await app.store.tenant("copied")).jid == "15550001234@s.whatsapp.net"
            assert proxy.connects >= 1
            # Logged out: the record forgets the device; nothing reads the store to find out.
            await app.supervisor.logout("copied")
            assert r.t.jid is None and (await app.store.tenant("copied")).jid is None
            started = await app.supervisor.start_tenant("copied")
            assert started["state"] == "new"  # "not paired: pair it first"
        finally:
            assert await oxyd_app.stop(app)
