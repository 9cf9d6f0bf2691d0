"""Control port: every route of design §6, its happy path and its errors."""

from __future__ import annotations

import io

import pytest
from http_helpers import ADMIN, Harness, until
from yarl import URL


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await Harness.start(tmp_path, monkeypatch)
    yield harness
    await harness.close()


async def err(resp, status: int, code: str | None = None) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


async def test_probes_are_open(h):
    r = await h.req("GET", "/healthz", token=None)
    assert r.status == 200 and await r.json() == {"status": "ok"}
    r = await h.req("GET", "/readyz", token=None)
    assert r.status == 200 and (await r.json())["status"] == "ready"


async def test_readyz_503_when_supervisor_is_broken(h):
    h.app.supervisor.broken = "test"
    r = await h.req("GET", "/readyz", token=None)
    assert r.status == 503 and (await r.json())["checks"]["supervisor"] is False


async def test_tenant_lifecycle(h):
    t = await h.add("shop")
    assert set(t) == {
        "settings",
        "id",
        "engine",
        "state",
        "jid",
        "push_name",
        "state_since_ms",
        "last_error",
        "failures",
        "next_attempt_ms",
        "last_event_ms",
        "messages_stored",
        "queue_depth",
    }
    r = await h.req("GET", "/v1/tenants")
    assert [x["id"] for x in (await r.json())["tenants"]] == ["shop"]
    r = await h.req("GET", "/v1/tenants/shop")
    assert (await r.json())["state"] == "connected"
    r = await h.req("POST", "/v1/tenants/shop/stop")
    assert r.status == 202 and (await r.json())["state"] == "stopped"
    r = await h.req("POST", "/v1/tenants/shop/start")
    assert r.status == 202
    await until(lambda: h.app.supervisor.runners["shop"].t.state == "connected")
    r = await h.req("POST", "/v1/tenants/shop/restart", json={})
    assert r.status == 202 and (await r.json())["id"] == "shop"
    # Let the restart settle: cancelling a runner mid-`BEGIN` trips a store.tx bug (reported).
    await until(lambda: h.app.supervisor.runners["shop"].t.state == "connected")
    await h.app.writer.flush()
    r = await h.req("DELETE", "/v1/tenants/shop?purge=true")
    assert r.status == 200 and await r.json() == {"id": "shop", "removed": True, "purged": True}
    await err(await h.req("GET", "/v1/tenants/shop"), 404, "tenant_not_found")


async def test_add_errors(h):
    await h.add("shop", connected=False)
    await err(
        await h.req("POST", "/v1/tenants", json={"id": "shop", "engine": "simulator"}),
        409,
        "tenant_exists",
    )
    for bad in ["../x", "A", "a" * 200, "é", "", "-x", "a/b", "x\n", 5, None, True]:
        e = await err(await h.req("POST", "/v1/tenants", json={"id": bad}), 400)
        assert e["code"] in ("invalid_tenant_id", "missing_field"), (bad, e)
        assert "id" in e["message"]
    e = await err(
        await h.req("POST", "/v1/tenants", json={"id": "b", "engine": 3}), 400, "invalid_field"
    )
    assert e["message"].startswith("engine:")
    await err(await h.req("POST", "/v1/tenants", json={"id": "b", "engine": "x"}), 400)
    e = await err(
        await h.req("POST", "/v1/tenants", json={"id": "b", "colour": "red"}), 400, "unknown_field"
    )
    assert "colour" in e["message"]
    await err(await h.req("POST", "/v1/tenants", data=b"{nope"), 400, "invalid_json")
    await err(await h.req("POST", "/v1/tenants", data=b"[1]"), 400, "invalid_body")
    await err(await h.req("POST", "/v1/tenants", data=b""), 400, "invalid_body")
    big = b'{"id": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    await err(await h.req("POST", "/v1/tenants", data=io.BytesIO(big)), 413, "body_too_large")
    # webhook given at creation is validated before the tenant exists
    e = await err(
        await h.req(
            "POST",
            "/v1/tenants",
            json={"id": "c", "engine": "simulator", "webhook": {"url": "ftp://x", "secret": "s"}},
        ),
        400,
    )
    assert e["message"].startswith("webhook.url")
    await err(await h.req("GET", "/v1/tenants/c"), 404)


async def test_add_with_webhook(h):
    r = await h.req(
        "POST",
        "/v1/tenants",
        json={
            "id": "hooked",
            "engine": "simulator",
            "webhook": {"url": "https://example.com/h", "secret": "s3cret"},
        },
    )
    assert r.status == 201
    r = await h.req("GET", "/v1/tenants/hooked/webhook")
    assert await r.json() == {"url": "https://example.com/h", "secret": "***", "events": None}


@pytest.mark.parametrize(
    "path", ["..%2Fx", "A", "a" * 200, "%C3%A9t%C3%A9", "%2e%2e", "x%00", "x%20y", "_x"]
)
async def test_bad_tenant_ids_in_paths(h, path):
    for method, suffix in [
        ("GET", ""),
        ("POST", "/start"),
        ("GET", "/messages"),
        ("DELETE", ""),
        ("PUT", "/webhook"),
    ]:
        # encoded=True: send the path as written (yarl would resolve "%2e%2e" client-side).
        r = await h.req(method, URL(f"/v1/tenants/{path}{suffix}", encoded=True))
        await err(r, 400, "invalid_tenant_id")


async def test_unknown_route_and_method(h):
    await err(await h.req("GET", "/nope"), 404, "not_found")
    await err(await h.req("GET", "/nope", token=None), 404, "not_found")
    r = await h.req("PATCH", "/v1/tenants")
    await err(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


async def test_send_receive_and_read(h):
    await h.add("shop")
    r = await h.req(
        "POST", "/v1/tenants/shop/messages", json={"to": "+15551234567", "text": "hello"}
    )
    assert r.status == 202, await r.text()
    sent = await r.json()
    assert sent["id"] and sent["chat"] == "15551234567@s.whatsapp.net"
    r = await h.req(
        "POST",
        "/v1/tenants/shop/simulate",
        json={"action": "message", "chat": "15550001111", "text": "hi", "count": 3},
    )
    assert r.status == 202

    async def stored():
        r = await h.req("GET", "/v1/tenants/shop/messages")
        return len((await r.json())["messages"]) == 4

    await until(stored)
    r = await h.req("GET", "/v1/tenants/shop/messages?limit=2")
    page = await r.json()
    assert len(page["messages"]) == 2 and page["next_cursor"]
    r = await h.req("GET", f"/v1/tenants/shop/messages?limit=2&cursor={page['next_cursor']}")
    page2 = await r.json()
    ids = {m["id"] for m in page["messages"]} | {m["id"] for m in page2["messages"]}
    assert len(ids) == 4 and page2["next_cursor"] is None
    r = await h.req("GET", "/v1/tenants/shop/messages?chat=15550001111@s.whatsapp.net")
    assert len((await r.json())["messages"]) == 3
    r = await h.req("GET", "/v1/tenants/shop/chats")
    chats = (await r.json())["chats"]
    assert {c["jid"] for c in chats} == {"15550001111@s.whatsapp.net", "15551234567@s.whatsapp.net"}
    assert set(chats[0]) >= {"jid", "name", "last_message_ms", "unread_count", "message_count"}
    for q in ["limit=0", "limit=1001", "limit=x", "cursor=%%%", "cursor=bm9wZQ"]:
        await err(await h.req("GET", f"/v1/tenants/shop/messages?{q}"), 400)
        await err(await h.req("GET", f"/v1/tenants/shop/chats?{q}"), 400)


async def test_send_errors(h):
    await h.add("shop")
    path = "/v1/tenants/shop/messages"
    for body, field in [
        ({"text": "x"}, "to"),
        ({"to": "1555123", "text": 5}, "text"),
        ({"to": "nope", "text": "x"}, "to"),
        ({"to": "15551234"}, "text"),
        ({"to": "15551234", "text": ""}, "text"),
        ({"to": "15551234", "text": "x", "cc": 1}, "cc"),
        ({"to": ["15551234"], "text": "x"}, "to"),
    ]:
        e = await err(await h.req("POST", path, json=body), 400)
        assert e["message"].startswith(field), (body, e)
    big = b'{"to": "15551234", "text": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    await err(await h.req("POST", path, data=io.BytesIO(big)), 413, "body_too_large")
    # A stopped tenant's send is queued, not refused (design §12).
    await h.req("POST", "/v1/tenants/shop/stop")
    r = await h.req("POST", path, json={"to": "15551234", "text": "x"})
    assert r.status == 202 and (await r.json())["status"] == "queued"


async def test_pairing_flow(h):
    await h.add("shop")
    await err(await h.req("POST", "/v1/tenants/shop/pair"), 409, "already_paired")
    r = await h.req("POST", "/v1/tenants/shop/logout")
    assert r.status == 202 and (await r.json())["state"] == "logged_out"
    r = await h.req("GET", "/v1/tenants/shop/pairing", headers={"Accept": "image/png"})
    await err(r, 404, "no_qr")
    await err(await h.req("POST", "/v1/tenants/shop/pair", json={"phone": "12"}), 400)
    await err(await h.req("POST", "/v1/tenants/shop/pair", json={"phone": 12}), 400)
    h.app.cfg.simulator.__dict__  # noqa: B018  (config is frozen; pair_after_ms is 50 ms)
    r = await h.req("POST", "/v1/tenants/shop/pair", json={"phone": "+1 555 000 1234"})
    assert r.status == 202, await r.text()
    info = await (await h.req("GET", "/v1/tenants/shop/pairing")).json()
    # Either still pairing (QR shown) or already paired (50 ms): both are valid answers.
    assert set(info) == {"qr", "code", "expires_ms"}
    await until(lambda: h.app.supervisor.runners["shop"].t.state == "connected")


async def test_pairing_png(tmp_path, monkeypatch):
    h = await Harness.start(tmp_path, monkeypatch, OXYD_SIMULATOR_PAIR_AFTER_MS="60000")
    try:
        await h.add("shop")
        await h.req("POST", "/v1/tenants/shop/logout")
        assert (await h.req("POST", "/v1/tenants/shop/pair")).status == 202

        async def qr():
            r = await h.req("GET", "/v1/tenants/shop/pairing")
            return (await r.json())["qr"]

        assert (await until(qr)).startswith("SIM")
        r = await h.req("GET", "/v1/tenants/shop/pairing", headers={"Accept": "image/png"})
        assert r.status == 200 and r.content_type == "image/png"
        assert (await r.read()).startswith(b"\x89PNG")
        await err(await h.req("POST", "/v1/tenants/shop/pair"), 409, "pairing_in_progress")
    finally:
        await h.close()


async def test_tokens_and_revocation(h):
    await h.add("shop", connected=False)
    await h.add("other", connected=False)
    tok = await h.token("shop")
    assert tok.startswith("oxt_")
    r = await h.req("GET", "/v1/tenants", token=tok)
    assert [t["id"] for t in (await r.json())["tenants"]] == ["shop"]
    await err(await h.req("GET", "/v1/tenants/other", token=tok), 404, "tenant_not_found")
    r = await h.req("DELETE", "/v1/tenants/shop/tokens")
    assert r.status == 200 and (await r.json())["revoked"] == 1
    await err(await h.req("GET", "/v1/tenants/shop", token=tok), 401, "unauthorized")
    # the token is stored hashed
    async with h.app.store.ro.execute("SELECT hash FROM tokens") as cur:
        assert all(tok not in row[0] for row in await cur.fetchall())


async def test_webhook_routes(h):
    await h.add("shop", connected=False)
    path = "/v1/tenants/shop/webhook"
    await err(await h.req("GET", path), 404, "webhook_not_found")
    await err(await h.req("DELETE", path), 404, "webhook_not_found")
    for body, field in [
        ({"url": "x", "secret": "s"}, "url"),
        ({"url": "http://a"}, "secret"),
        ({"url": "http://a", "secret": "s", "events": ["nope"]}, "events"),
        ({"url": "http://a", "secret": "s", "x": 1}, "x"),
    ]:
        e = await err(await h.req("PUT", path, json=body), 400)
        assert e["message"].startswith(field)
    body = {"url": "http://127.0.0.1:9/h", "secret": "s3cret", "events": ["message.received"]}
    r = await h.req("PUT", path, json=body)
    assert r.status == 200 and (await r.json())["secret"] == "***"
    r = await h.req("GET", path)
    assert (await r.json())["events"] == ["message.received"]
    # the app's real dispatcher: nothing dead yet, nothing to replay
    r = await h.req("GET", path + "/dead")
    assert r.status == 200 and (await r.json()) == {"events": []}
    r = await h.req("POST", path + "/replay")
    assert r.status in (200, 202) and (await r.json())["replayed"] == 0
    r = await h.req("DELETE", path)
    assert r.status == 200 and await r.json() == {"deleted": True}


async def test_webhook_dead_and_replay_call_the_dispatcher(h):
    calls = []

    class FakeDispatcher:
        stats = {"delivered": 3, "dead": 1}

        async def dead(self, tenant_id, limit):
            calls.append(("dead", tenant_id, limit))
            return [{"id": "e1", "type": "message.received"}]

        async def replay(self, tenant_id):
            calls.append(("replay", tenant_id))
            return 1

    h.app.extras["webhooks"] = FakeDispatcher()
    await h.add("shop", connected=False)
    r = await h.req("GET", "/v1/tenants/shop/webhook/dead?limit=5")
    assert (await r.json())["events"][0]["id"] == "e1"
    r = await h.req("POST", "/v1/tenants/shop/webhook/replay")
    assert r.status == 202 and await r.json() == {"replayed": 1}
    assert calls == [("dead", "shop", 5), ("replay", "shop")]
    text = await (await h.req("GET", "/metrics")).text()
    assert 'oxyd_webhook_deliveries_total{result="delivered"} 3.0' in text


async def test_health_and_simulate_errors(h):
    await h.add("shop")
    r = await h.req("GET", "/v1/health")
    body = await r.json()
    assert r.status == 200 and body["total"] == 1 and body["healthy"] == 1
    assert set(body) >= {"checked_at_ms", "total", "healthy", "reconnected", "failed", "alerts"}
    path = "/v1/tenants/shop/simulate"
    await err(await h.req("POST", path, json={"action": "nope"}), 400, "invalid_action")
    await err(await h.req("POST", path, json={"action": "ban"}), 400, "invalid_action")
    await err(await h.req("POST", path, data=b"nope"), 400, "invalid_json")
    await err(await h.req("POST", path), 400)
    r = await h.req("POST", path, json={"action": "disconnect"})
    assert r.status == 202


async def test_metrics(h):
    await h.add("shop")
    await h.req("GET", "/v1/tenants/shop")
    await h.req("GET", "/v1/tenants/nope")
    r = await h.req("GET", "/metrics")
    assert r.status == 200 and r.content_type == "text/plain"
    text = await r.text()
    for needle in [
        'oxyd_tenants{state="connected"} 1.0',
        'oxyd_messages_stored_total{tenant="shop"}',
        "oxyd_writer_queue_depth",
        'oxyd_sends_total{result="sent"}',
        "oxyd_send_queued",
        "oxyd_connects_peak",
        "oxyd_process_open_fds",
        "oxyd_process_resident_memory_bytes",
        'route="/v1/tenants/{id}"',
        'status="404"',
    ]:
        assert needle in text, needle
    assert "/v1/tenants/nope" not in text  # route templates, never raw paths


async def test_errors_never_leak_as_500(h, monkeypatch):
    async def boom(*a, **k):
        raise RuntimeError("secret detail")

    await h.add("shop", connected=False)
    monkeypatch.setattr(h.app.supervisor, "stop_tenant", boom)
    e = await err(await h.req("POST", "/v1/tenants/shop/stop"), 500, "internal_error")
    assert "secret" not in e["message"]


async def test_admin_token_is_the_configured_one(h):
    assert h.app.admin_token == ADMIN
    await err(await h.req("GET", "/v1/tenants", token="é"), 401)
    await err(await h.req("GET", "/v1/tenants", token="x" * 5000), 401)
    r = await h.req("GET", "/v1/tenants", headers={"Authorization": "Basic abc"}, token=None)
    await err(r, 401, "unauthorized")


async def test_tenant_list_is_gzipped_for_clients_that_accept_it_and_current(h):
    for i in range(30):
        await h.add(f"t{i:02d}", connected=False)
    plain = await h.req("GET", "/v1/tenants", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    zipped = await h.req("GET", "/v1/tenants", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert await zipped.json() == await plain.json()  # aiohttp's client inflates it
    # a state change shows at once, cache or not
    await h.req("POST", "/v1/tenants/t00/stop")
    again = await h.req("GET", "/v1/tenants", headers={"Accept-Encoding": "gzip"})
    states = {t["id"]: t["state"] for t in (await again.json())["tenants"]}
    assert states["t00"] == "stopped"
