"""Shared helpers for the control-port tests: a real App with simulator tenants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from helpers import until

from oxyd import app as oxyd_app
from oxyd.clock import RealClock
from oxyd.config import load
from oxyd.http.server import make_app
from oxyd.simulator.engine import SimulatorEngine

ADMIN = "admin-token-for-tests-0123456789"


def config(tmp_path: Path, **env: str):
    base = {
        "OXYD_DATA_DIR": str(tmp_path),
        "OXYD_SIMULATOR_PAIR_AFTER_MS": "50",
        "OXYD_SUPERVISOR_STOP_GRACE_S": "2",
    }
    return load(env={**base, **env})


class Harness:
    """An App (simulator engine only), started, plus a TestClient on its web app."""

    def __init__(self, app: oxyd_app.App, client: TestClient) -> None:
        self.app, self.client = app, client

    @staticmethod
    async def start(tmp_path: Path, monkeypatch, **env: str) -> Harness:
        monkeypatch.setenv("OXYD_ADMIN_TOKEN", ADMIN)
        cfg = config(tmp_path, **env)
        clock = RealClock()
        engines = {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
        app = await oxyd_app.build(cfg, clock, engines=engines)
        await oxyd_app.start(app)
        client = TestClient(TestServer(make_app(app)))
        await client.start_server()
        return Harness(app, client)

    async def close(self) -> None:
        await self.client.close()
        await oxyd_app.stop(self.app)

    def h(self, token: str | None = ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def req(self, method: str, path: str, token: str | None = ADMIN, **kw):
        headers = {**self.h(token), **kw.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kw)

    async def add(self, tid: str, connected: bool = True) -> dict[str, Any]:
        r = await self.req("POST", "/v1/tenants", json={"id": tid, "engine": "simulator"})
        assert r.status == 201, await r.text()
        if connected:
            await until(lambda: self.app.supervisor.runners[tid].t.state == "connected")
        return await r.json()

    async def token(self, tid: str) -> str:
        r = await self.req("POST", f"/v1/tenants/{tid}/tokens")
        assert r.status == 201, await r.text()
        return (await r.json())["token"]
