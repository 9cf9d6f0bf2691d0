"""Corrupt files: a tenant whose device store is garbage, or whose folder cannot be read, is
parked with a reason that says so; the other tenants run and the daemon stays ready.

- simulator tenant, garbage bytes in tenants/<id>/simulator.json (in-process app, restarted);
- neonize tenant that was connected, garbage bytes in tenants/<id>/whatsmeow.sqlite3;
- simulator tenant whose folder is chmod 000, with the real `oxyd run` process. Root ignores
  file modes, so when the tests run as root the daemon runs as user `nobody` (uid 65534) on a
  data directory it owns; without root, chmod works as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from reliakit import Daemon, until

from oxyd import app as oxyd_app
from oxyd.clock import RealClock
from oxyd.config import load
from oxyd.http.server import make_app
from oxyd.model import PARKED, State
from oxyd.simulator.engine import SimulatorEngine

pytestmark = pytest.mark.timeout(120)
ADMIN = "corrupt-admin-token-0123456789"
GOOD = ["good1", "good2"]
GARBAGE = b"\x00\xff garbage \x13\x37" * 64
# A reason an operator can act on: it names the problem with the store or folder.
CLEAR_REASON = re.compile(r"corrupt|unreadable|cannot be read|permission|damaged|invalid", re.I)


def _cfg(data: Path, **env: str):
    return load(
        env={
            "OXYD_DATA_DIR": str(data),
            "OXYD_SUPERVISOR_STOP_GRACE_S": "2",
            "OXYD_SUPERVISOR_BACKOFF_BASE_S": "0.05",
            "OXYD_SUPERVISOR_BACKOFF_CAP_S": "0.1",
            "OXYD_SUPERVISOR_MAX_FAILURES": "3",
            **env,
        }
    )


async def _start(cfg, engines=None):
    clock = RealClock()
    if engines is None:
        engines = {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
    app = await oxyd_app.build(cfg, clock, engines)
    await oxyd_app.start(app)
    client = TestClient(TestServer(make_app(app)))
    await client.start_server()
    return app, client


async def _stop(app, client) -> None:
    await client.close()
    await oxyd_app.stop(app)


def _state(app, tid: str) -> State:
    return app.supervisor.runners[tid].t.state


async def _assert_parked_others_run(app, client, bad: str) -> None:
    """The bad tenant parked with a clear reason; the others connected; the daemon ready."""
    sup = app.supervisor
    await until(
        lambda: all(_state(app, t) is State.CONNECTED for t in GOOD), 15, "good tenants connected"
    )

    def settled() -> bool:
        return _state(app, bad) in PARKED

    try:
        await until(settled, 8, f"{bad} parked")
    except AssertionError:
        t = sup.runners[bad].t
        raise AssertionError(
            f"{bad} is {t.state} ({t.last_error!r}), not parked; supervisor.broken={sup.broken!r}"
        ) from None
    reason = sup.runners[bad].t.last_error or ""
    assert CLEAR_REASON.search(reason), f"unclear reason: {reason!r}"
    r = await client.get("/readyz")
    assert r.status == 200, await r.text()
    # Operator actions on the bad tenant answer, and never 5xx.
    for action in ("restart", "start", "stop"):
        r = await client.post(
            f"/v1/tenants/{bad}/{action}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert r.status < 500, (action, r.status, await r.text())
    assert all(_state(app, t) is State.CONNECTED for t in GOOD)


async def test_corrupt_simulator_store_parks_only_that_tenant(tmp_path, monkeypatch):
    monkeypatch.setenv("OXYD_ADMIN_TOKEN", ADMIN)
    cfg = _cfg(tmp_path / "data")
    app, client = await _start(cfg)
    try:
        for tid in [*GOOD, "bad"]:
            await app.supervisor.add(tid, "simulator")
        await until(lambda: all(_state(app, t) is State.CONNECTED for t in [*GOOD, "bad"]), 10)
    finally:
        await _stop(app, client)
    (cfg.data_dir / "tenants" / "bad" / "simulator.json").write_bytes(GARBAGE)
    app, client = await _start(cfg)
    try:
        await _assert_parked_others_run(app, client, "bad")
    finally:
        await _stop(app, client)


async def test_operator_actions_and_health_sweep_survive_a_corrupt_store(tmp_path, monkeypatch):
    monkeypatch.setenv("OXYD_ADMIN_TOKEN", ADMIN)
    cfg = _cfg(tmp_path / "data")
    app, client = await _start(cfg)
    try:
        for tid in ["aaa-bad", *GOOD]:
            await app.supervisor.add(tid, "simulator")
        await until(lambda: all(_state(app, t) is State.CONNECTED for t in GOOD), 10)
    finally:
        await _stop(app, client)
    (cfg.data_dir / "tenants" / "aaa-bad" / "simulator.json").write_bytes(GARBAGE)
    app, client = await _start(cfg)
    try:
        await until(lambda: all(_state(app, t) is State.CONNECTED for t in GOOD), 10)
        statuses = {}
        for action in ("restart", "start"):
            r = await client.post(
                f"/v1/tenants/aaa-bad/{action}", headers={"Authorization": f"Bearer {ADMIN}"}
            )
            statuses[action] = r.status
        sweep_error = None
        try:
            sweep = await app.supervisor.health_sweep()
        except Exception as e:
            sweep_error, sweep = repr(e), None
        ok = all(s < 500 for s in statuses.values()) and sweep_error is None
        assert ok, (statuses, sweep_error)
        assert sweep is not None and sweep["healthy"] == len(GOOD), sweep
    finally:
        await _stop(app, client)


async def test_corrupt_neonize_store_parks_only_that_tenant(tmp_path, monkeypatch):
    pytest.importorskip("neonize")
    monkeypatch.setenv("OXYD_ADMIN_TOKEN", ADMIN)
    cfg = _cfg(tmp_path / "data")
    clock = RealClock()
    engines = oxyd_app.make_engines(cfg, clock)
    if "neonize" not in engines:
        pytest.skip("the neonize engine is not available on this platform")
    app, client = await _start(cfg, engines)
    try:
        for tid in GOOD:
            await app.supervisor.add(tid, "simulator")
        await app.supervisor.add("nz", "neonize")
        await until(lambda: all(_state(app, t) is State.CONNECTED for t in GOOD), 10)
    finally:
        await _stop(app, client)
    # The tenant was paired and connected when the daemon stopped; then its store got damaged.
    (cfg.data_dir / "tenants" / "nz" / "whatsmeow.sqlite3").write_bytes(GARBAGE)
    con = sqlite3.connect(cfg.data_dir / "oxyd.sqlite3")
    with con:
        con.execute(
            "UPDATE tenants SET state='connected', reason=NULL,"
            " jid='4915100000000@s.whatsapp.net' WHERE id='nz'"
        )
    con.close()
    app, client = await _start(cfg, oxyd_app.make_engines(cfg, clock))
    try:
        await _assert_parked_others_run(app, client, "nz")
    finally:
        await _stop(app, client)


# Root reads through chmod 000 (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): drop both from the
# daemon's capability bounding set, so it meets file modes like any service user would.
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.e2e
async def test_unreadable_tenant_folder_parks_only_that_tenant(tmp_path):
    prefix = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip(
                "running as root without setpriv: chmod 000 cannot make a folder unreadable"
            )
        prefix = NO_DAC
    data = tmp_path / "data"
    bad_dir = data / "tenants" / "bad"
    d = Daemon(
        data,
        prefix=prefix,
        OXYD_SUPERVISOR_STOP_GRACE_S="2",
        OXYD_SUPERVISOR_MAX_FAILURES="3",
        OXYD_SUPERVISOR_BACKOFF_BASE_S="0.05",
        OXYD_SUPERVISOR_BACKOFF_CAP_S="0.1",
    )
    try:
        await d.start()
        for tid in [*GOOD, "bad"]:
            code, body = await d.call("POST", "/v1/tenants", {"id": tid, "engine": "simulator"})
            assert code == 201, body

        async def all_connected() -> bool:
            return set((await d.states()).values()) == {"connected"}

        await until(all_connected, 15, "tenants connected", step_s=0.05)
        assert await d.term() == 0
        os.chmod(bad_dir, 0)
        if prefix is None and os.access(bad_dir / "simulator.json", os.R_OK):
            pytest.skip("chmod 000 does not stop reads here")
        await d.start()

        async def good_back() -> bool:
            s = await d.states()
            return all(s.get(t) == "connected" for t in GOOD)

        await until(good_back, 15, "good tenants connected", step_s=0.05)

        async def bad_parked() -> bool:
            return (await d.states()).get("bad") in {str(s) for s in PARKED}

        try:
            await until(bad_parked, 8, "bad parked", step_s=0.05)
        except AssertionError:
            code, t = await d.call("GET", "/v1/tenants/bad")
            rcode, ready = await d.call("GET", "/readyz")
            raise AssertionError(f"bad: {t}; readyz {rcode} {ready}") from None
        code, t = await d.call("GET", "/v1/tenants/bad")
        assert CLEAR_REASON.search(t["last_error"] or ""), t
        code, ready = await d.call("GET", "/readyz")
        assert code == 200, ready
        for action in ("restart", "start", "stop"):
            code, body = await d.call("POST", f"/v1/tenants/bad/{action}")
            assert 0 < code < 500, (action, code, body)
        assert await d.term() == 0
    finally:
        await d.close()
        if bad_dir.exists():
            os.chmod(bad_dir, 0o700)
