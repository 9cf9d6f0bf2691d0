"""Revocation is immediate, and a re-created tenant id starts empty."""

import asyncio
import json

from helpers import until
from http_helpers import ADMIN, Harness

from oxyd.http import page


async def _open_stream(hx, token):
    resp = await hx.req("GET", "/v1/events", token)
    assert resp.status == 200
    line = await asyncio.wait_for(resp.content.readline(), 5)
    assert line.startswith(b"event: snapshot")
    return resp


async def _ended(resp) -> bool:
    """True once the server closed the stream (reads until EOF, skipping frames)."""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        if not line:
            return True


async def test_revoking_tokens_closes_the_tenants_open_streams(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "TICK_S", 0.05)
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("a")
        await hx.add("b")
        token_a, token_b = await hx.token("a"), await hx.token("b")
        stream_a = await _open_stream(hx, token_a)
        stream_b = await _open_stream(hx, token_b)
        stream_admin = await _open_stream(hx, ADMIN)
        await until(lambda: len(hx.client.server.app[page.STREAMS]) == 3)
        r = await hx.req("DELETE", "/v1/tenants/a/tokens")
        assert (await r.json())["revoked"] == 1
        assert await _ended(stream_a)
        # Others keep streaming.
        await until(lambda: len(hx.client.server.app[page.STREAMS]) == 2)
        r = await hx.req("GET", "/v1/tenants/a", token_a)
        assert r.status == 401
        # Deleting a tenant closes its streams too.
        r = await hx.req("DELETE", "/v1/tenants/b")
        assert r.status == 200
        assert await _ended(stream_b)
        await until(lambda: len(hx.client.server.app[page.STREAMS]) == 1)
        stream_admin.close()
    finally:
        await hx.close()


async def test_a_recreated_tenant_id_does_not_see_the_old_messages(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("shop")
        body = {"action": "message", "chat": "15551234567", "text": "old secret", "count": 5}
        await hx.req("POST", "/v1/tenants/shop/simulate", json=body)
        await until(lambda: hx.app.supervisor.runners["shop"].t.messages_stored == 5)
        r = await hx.req("DELETE", "/v1/tenants/shop")  # no purge: rows stay for the operator
        assert r.status == 200
        assert await hx.app.store.count_messages("shop") == 5
        await hx.add("shop")
        token = await hx.token("shop")
        r = await hx.req("GET", "/v1/tenants/shop/messages", token)
        assert (await r.json())["messages"] == []
        r = await hx.req("GET", "/v1/tenants/shop/chats", token)
        assert (await r.json())["chats"] == []
        r = await hx.req("GET", "/v1/tenants/shop", token)
        assert json.loads(await r.text())["messages_stored"] == 0
        assert await hx.app.store.count_messages("shop") == 0
    finally:
        await hx.close()


async def test_restart_is_rate_limited_per_tenant(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("a")
        await hx.add("b")
        token = await hx.token("a")
        codes = []
        for _ in range(4):
            r = await hx.req("POST", "/v1/tenants/a/restart", token)
            codes.append(r.status)
        assert codes == [202, 202, 202, 429]
        assert int(r.headers["Retry-After"]) >= 1
        assert "restarts a minute" in (await r.json())["error"]["message"]
        # Another tenant has its own budget.
        r = await hx.req("POST", "/v1/tenants/b/restart")
        assert r.status == 202
    finally:
        await hx.close()


async def test_a_stream_that_missed_the_close_ends_at_its_next_keepalive(tmp_path, monkeypatch):
    monkeypatch.setattr(page, "TICK_S", 0.02)
    monkeypatch.setattr(page, "KEEPALIVE_S", 0.1)
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("a")
        token = await hx.token("a")
        stream = await _open_stream(hx, token)
        # Revoked behind the route's back (the race: auth read the token just before).
        await hx.app.store.revoke_tokens("a")
        assert await _ended(stream)
    finally:
        await hx.close()
