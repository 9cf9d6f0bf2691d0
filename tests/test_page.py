"""The status page and its event stream, through aiohttp's test client on a real app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from helpers import until

from oxyd import app as oxyd_app
from oxyd.clock import RealClock
from oxyd.config import load
from oxyd.http import page
from oxyd.http.server import make_app
from oxyd.simulator.engine import SimulatorEngine
from oxyd.supervision.outcome import ACTIONS


@pytest.fixture
async def app(tmp_path, monkeypatch) -> AsyncIterator[oxyd_app.App]:
    monkeypatch.delenv("OXYD_ADMIN_TOKEN", raising=False)
    cfg = load(None, env={"OXYD_DATA_DIR": str(tmp_path), "OXYD_SIMULATOR_PAIR_AFTER_MS": "300"})
    clock = RealClock()
    a = await oxyd_app.build(
        cfg, clock, {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
    )
    await oxyd_app.start(a)
    yield a
    await oxyd_app.stop(a)


async def _client(a: oxyd_app.App, web_app: web.Application) -> TestClient:
    client = TestClient(TestServer(web_app))
    await client.start_server()
    return client


@pytest.fixture
async def client(app) -> AsyncIterator[TestClient]:
    web_app = make_app(app)
    page.setup(web_app)  # the wiring line http.make_app is to carry
    c = await _client(app, web_app)
    yield c
    await c.close()


def admin(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.admin_token}"}


async def add_tenant(client: TestClient, app, tid: str) -> None:
    r = await client.post(
        "/v1/tenants", json={"id": tid, "engine": "simulator"}, headers=admin(app)
    )
    assert r.status == 201, await r.text()
    await until(lambda: app.supervisor.runners[tid].t.state == "connected", what=f"{tid} up")


async def next_event(resp: ClientResponse, timeout_s: float = 5.0) -> tuple[str, Any]:
    """The next SSE event (comments skipped)."""
    kind, data = "message", []
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), timeout_s)
        if not raw:
            raise EOFError("the stream ended")
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                return kind, json.loads("".join(data))
            kind = "message"
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


async def events_until(resp: ClientResponse, pred: Callable[[str, Any], bool]) -> list:
    seen = []
    while True:
        kind, data = await next_event(resp)
        seen.append((kind, data))
        if pred(kind, data):
            return seen


# ---- the page ----


async def test_page_is_served_without_a_token_with_strict_security_headers(client):
    r = await client.get("/")
    assert r.status == 200
    assert r.content_type == "text/html" and r.charset == "utf-8"
    h = r.headers
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Frame-Options"] == "DENY"
    assert h["Cache-Control"] == "no-store"
    csp = dict(d.strip().split(" ", 1) for d in h["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'self'"
    assert csp["img-src"] == "'self' data: blob:"
    assert csp["frame-ancestors"] == csp["base-uri"] == csp["form-action"] == "'none'"
    assert "unsafe-inline" not in h["Content-Security-Policy"]
    body = await r.read()
    for tag in ("script", "style"):
        blocks = re.findall(rb"<%s[^>]*>(.*?)</%s>" % (tag.encode(), tag.encode()), body, re.S)
        assert len(blocks) == 1, f"one inline <{tag}>, allowed by its hash"
        digest = base64.b64encode(hashlib.sha256(blocks[0]).digest()).decode()
        assert csp[f"{tag}-src"] == f"'sha256-{digest}'"


async def test_page_is_self_contained_and_never_parses_data_as_html(client):
    html = (await (await client.get("/")).read()).decode()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), "no external URLs"
    assert not re.search(r"\b(src|href)\s*=\s*[\"']?(?!data:)[a-z]+:", html, re.I)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in html
    assert "EventSource" not in html, "EventSource cannot send the token in a header"
    assert "sessionStorage" in html and "localStorage" not in html
    for action in ACTIONS.values():  # the page explains parked states as the daemon does
        assert action in html


# ---- the event stream ----


async def test_events_need_a_token(client):
    r = await client.get("/v1/events")
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "unauthorized"
    r = await client.get("/v1/events", headers={"Authorization": "Bearer nope"})
    assert r.status == 401


async def test_admin_stream_gets_snapshot_then_state_changes(client, app):
    await add_tenant(client, app, "alpha")
    resp = await client.get("/v1/events", headers=admin(app))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-store"
    kind, snap = await next_event(resp)
    assert kind == "snapshot" and snap["admin"] is True
    assert [t["id"] for t in snap["tenants"]] == ["alpha"]
    assert snap["tenants"][0]["state"] == "connected"

    r = await client.post(
        "/v1/tenants/alpha/simulate", json={"action": "disconnect"}, headers=admin(app)
    )
    assert r.status == 202
    seen = await events_until(resp, lambda k, d: k == "state" and d["data"]["state"] == "connected")
    states = [d["data"]["state"] for k, d in seen if k == "state"]
    assert states[0] == "reconnecting" and all(d["tenant"] == "alpha" for _, d in seen)

    await (await client.delete("/v1/tenants/alpha", headers=admin(app))).read()
    assert await next_event(resp) == ("removed", {"type": "removed", "tenant": "alpha"})
    resp.close()


async def test_pairing_updates_are_streamed(client, app):
    await add_tenant(client, app, "alpha")
    resp = await client.get("/v1/events", headers=admin(app))
    await next_event(resp)
    assert (await client.post("/v1/tenants/alpha/logout", headers=admin(app))).status == 202
    assert (await client.post("/v1/tenants/alpha/pair", headers=admin(app))).status == 202
    seen = await events_until(resp, lambda k, d: k == "state" and d["data"]["state"] == "connected")
    pairing = [d["pairing"] for k, d in seen if k == "pairing"]
    assert pairing and pairing[0]["qr"].startswith("SIM")
    order = [d["data"]["state"] if k == "state" else k for k, d in seen]
    assert order.index("pairing") < order.index("connected")
    resp.close()


async def test_tenant_token_sees_only_its_own_tenant(client, app):
    await add_tenant(client, app, "alpha")
    await add_tenant(client, app, "beta")
    r = await client.post("/v1/tenants/beta/tokens", headers=admin(app))
    token = (await r.json())["token"]
    resp = await client.get("/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    kind, snap = await next_event(resp)
    assert kind == "snapshot" and snap["admin"] is False and snap["health"] is None
    assert [t["id"] for t in snap["tenants"]] == ["beta"]
    for tid in ("alpha", "beta"):  # alpha's events come first and must be filtered out
        r = await client.post(
            f"/v1/tenants/{tid}/simulate", json={"action": "disconnect"}, headers=admin(app)
        )
        assert r.status == 202
    kind, ev = await next_event(resp)
    assert kind == "state" and ev["tenant"] == "beta"
    resp.close()


async def test_keepalive_comments_and_client_disconnect_unsubscribes(client, app, monkeypatch):
    monkeypatch.setattr(page, "KEEPALIVE_S", 0.1)
    monkeypatch.setattr(page, "TICK_S", 0.02)
    resp = await client.get("/v1/events", headers=admin(app))
    await next_event(resp)
    assert len(app.supervisor.listeners) == 1
    line = await asyncio.wait_for(resp.content.readline(), 5)
    assert line == b": keep-alive\n"
    resp.close()
    await until(lambda: not app.supervisor.listeners, what="the listener to be removed")


async def test_a_listener_that_falls_behind_is_dropped_and_its_stream_ends(
    client, app, monkeypatch
):
    monkeypatch.setattr(page, "QUEUE_MAX", 2)
    monkeypatch.setattr(page, "TICK_S", 0.02)
    resp = await client.get("/v1/events", headers=admin(app))
    await next_event(resp)
    for _ in range(3):  # no await between: the stream cannot read, so the queue overflows
        app.supervisor.publish({"type": "removed", "tenant": "ghost"})
    assert not app.supervisor.listeners
    for _ in range(2):
        assert (await next_event(resp))[0] == "removed"  # what was queued still arrives
    with pytest.raises(EOFError):
        await next_event(resp)


async def test_a_client_that_stops_reading_is_cut_off(client, app, monkeypatch):
    monkeypatch.setattr(page, "WRITE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(page, "TICK_S", 0.02)
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        f"{app.admin_token}\r\n\r\n".encode()
    )
    await writer.drain()
    streams = client.server.app[page.STREAMS]
    await until(lambda: streams, what="the stream to open")
    big = "x" * 65536

    async def flood() -> bool:  # never read: the socket buffers fill, then writes block
        for _ in range(8):
            app.supervisor.publish({"type": "removed", "tenant": "ghost", "pad": big})
        await asyncio.sleep(0.01)
        return not streams

    try:
        await until(flood, what="the stuck stream to be cut off")
        assert not app.supervisor.listeners
    finally:
        writer.close()


async def test_streams_end_when_the_server_shuts_down(client, app):
    resp = await client.get("/v1/events", headers=admin(app))
    await next_event(resp)
    started = time.monotonic()
    await asyncio.wait_for(client.server.close(), 10)
    assert time.monotonic() - started < 5, "an open stream held the shutdown"
    assert not app.supervisor.listeners
    with pytest.raises((EOFError, ConnectionError)):
        await next_event(resp)


async def test_without_the_shutdown_hook_streams_end_when_the_supervisor_stops(app, monkeypatch):
    monkeypatch.setattr(page, "TICK_S", 0.02)
    app.extras["route_tables"] = [page.table]  # routes only, no on_shutdown hook
    client = await _client(app, make_app(app))
    try:
        resp = await client.get("/v1/events", headers=admin(app))
        await next_event(resp)
        app.supervisor.running = False
        with pytest.raises(EOFError):
            await next_event(resp)
        app.supervisor.running = True
    finally:
        await client.close()
