"""No SSRF through tenant webhooks: refused when set and again when connecting."""

import ipaddress
import socket
import time

import pytest
from helpers import until
from http_helpers import Harness
from test_webhooks import SECRET, Receiver

from oxyd.clock import RealClock
from oxyd.config import WebhooksConfig
from oxyd.destinations import Guard, address_reason
from oxyd.model import Tenant
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.webhooks import Dispatcher

FORBIDDEN = [
    "127.0.0.1",
    "127.9.9.9",
    "10.0.0.5",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.10",
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",
    "100.64.0.1",  # carrier-grade NAT: not public
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
]


@pytest.mark.parametrize("addr", FORBIDDEN)
def test_every_forbidden_range(addr):
    assert address_reason(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(addr):
    assert address_reason(ipaddress.ip_address(addr)) is None


def test_the_control_port_on_its_own_address_is_forbidden():
    g = Guard(control_host="93.184.216.34", control_port=8780)
    assert g.reason(ipaddress.ip_address("93.184.216.34"), 8780) == "oxyd's own control port"
    assert g.reason(ipaddress.ip_address("93.184.216.34"), 443) is None
    assert Guard(allow_private=True).reason(ipaddress.ip_address("127.0.0.1"), 80) is None


def _url(addr, port=9):
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}/hook"


async def test_tenant_token_put_is_refused_for_every_forbidden_range(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("shop", connected=False)
        token = await hx.token("shop")
        urls = [_url(a) for a in FORBIDDEN] + [
            "http://localhost:9/hook",  # a name that resolves to 127.0.0.1 (hosts file)
            f"http://127.0.0.1:{hx.client.port}/v1/tenants",  # the control port itself
        ]
        for url in urls:
            r = await hx.req(
                "PUT", "/v1/tenants/shop/webhook", token, json={"url": url, "secret": "s"}
            )
            assert r.status == 400, url
            assert (await r.json())["error"]["code"] == "forbidden_destination", url
        r = await hx.req("GET", "/v1/tenants/shop/webhook")
        assert r.status == 404  # nothing was stored
        # A public address passes (an IP literal: no DNS query leaves the machine).
        body = {"url": "https://93.184.216.34/hook", "secret": "s"}
        r = await hx.req("PUT", "/v1/tenants/shop/webhook", token, json=body)
        assert r.status == 200
        # The admin may point a tenant's webhook anywhere.
        body = {"url": "http://127.0.0.1:9/hook", "secret": "s"}
        r = await hx.req("PUT", "/v1/tenants/shop/webhook", json=body)
        assert r.status == 200
        assert (await hx.app.store.ro.execute_fetchall("SELECT guarded FROM webhooks"))[0][0] == 0
    finally:
        await hx.close()


async def test_allow_private_lifts_the_guard(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch, OXYD_WEBHOOKS_ALLOW_PRIVATE="true")
    try:
        await hx.add("shop", connected=False)
        token = await hx.token("shop")
        body = {"url": "http://localhost:9/hook", "secret": "s"}
        r = await hx.req("PUT", "/v1/tenants/shop/webhook", token, json=body)
        assert r.status == 200
    finally:
        await hx.close()


class Rebinding:
    """An aiohttp resolver that answers like an attacker's DNS: a public address when the URL
    is checked, 127.0.0.1 when oxyd connects. Nothing leaves the machine."""

    def __init__(self) -> None:
        self.asked = 0

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked += 1
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self):
        pass


async def test_dns_rebinding_is_caught_at_connect_time(tmp_path, monkeypatch):
    receiver = Receiver()
    await receiver.start()
    store = await Store.open(tmp_path)
    rebinding = Rebinding()
    d = Dispatcher(
        store,
        WebhooksConfig(retry_base_s=0.02, retry_cap_s=0.1),
        RealClock(),
        guard=Guard(resolver=rebinding),
    )
    await d.start()
    try:
        # The PUT saw a public address for this name; at delivery it is 127.0.0.1.
        # The admin's webhook to the same receiver (by address) is not guarded.
        for tid, host, guarded in (("evil", "rebind.example", True), ("ops", "127.0.0.1", False)):
            await store.add_tenant(Tenant(id=tid, engine="simulator"))
            url = f"http://{host}:{receiver.port}/{tid}"
            await store.set_webhook(tid, url, SECRET, None, 0, guarded=guarded)
        subs = outbox.Subscriptions()
        subs.set_tenant("evil", None)
        subs.set_tenant("ops", None)
        now_ms = time.time_ns() // 1_000_000
        rows = outbox.rows(subs, "evil", "message.received", {"id": "1"}, now_ms)
        rows += outbox.rows(subs, "ops", "message.received", {"id": "2"}, now_ms)
        await store.append_outbox(rows)
        d.kick()
        await until(lambda: len(receiver.ids("ops")) == 1, 10, "the unguarded one delivered")
        dead = await until(lambda: d.dead("evil"), 10, "the guarded one dead")
        assert "forbidden destination" in dead[0]["last_error"]
        assert rebinding.asked >= 1 and receiver.ids("evil", attempts=True) == []
    finally:
        await d.stop()
        await store.close()
        await receiver.stop()


async def test_a_tenant_sees_only_the_status_code_of_dead_events(tmp_path, monkeypatch):
    hx = await Harness.start(tmp_path, monkeypatch)
    try:
        await hx.add("shop", connected=False)
        token = await hx.token("shop")
        store = hx.app.store
        subs = outbox.Subscriptions()
        subs.set_tenant("shop", None)
        await store.append_outbox(outbox.rows(subs, "shop", "message.received", {"id": "1"}, 1))
        await store.append_outbox(outbox.rows(subs, "shop", "message.received", {"id": "2"}, 2))
        rows = await store.ro.execute_fetchall("SELECT id FROM outbox ORDER BY id")
        await outbox.mark_dead(store, rows[0][0], 3, "cannot connect to 10.0.0.7: refused", 5)
        await outbox.mark_dead(store, rows[1][0], 1, "HTTP 410", 6)
        r = await hx.req("GET", "/v1/tenants/shop/webhook/dead", token)
        errors = sorted(e["last_error"] for e in (await r.json())["events"])
        assert errors == ["HTTP 410", "no HTTP response"]
        r = await hx.req("GET", "/v1/tenants/shop/webhook/dead")  # the admin sees everything
        assert any("10.0.0.7" in e["last_error"] for e in (await r.json())["events"])
    finally:
        await hx.close()
