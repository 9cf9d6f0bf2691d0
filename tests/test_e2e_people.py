"""People and groups on the real `oxyd run` process (design §13): every route, tenant
isolation on each, the lookup cache across a restart, the LID map, settings that persist."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from helpers import sync_until
from test_e2e_run import TOKEN, Daemon

pytestmark = pytest.mark.e2e
GROUP = "120363000000000042@g.us"


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data")
    yield d
    d.kill()


def as_tenant(d: Daemon, token: str, method: str, path: str, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{d.port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def ok(d: Daemon, method: str, path: str, body=None, status=200):
    code, data = d.call(method, path, body)
    assert code == status, (method, path, code, data)
    return data


def sim(d: Daemon, tid: str, **action):
    return ok(d, "POST", f"/v1/tenants/{tid}/simulate", action, 202)


def test_people_and_groups_end_to_end(daemon):
    d = daemon.start()
    for tid in ("a", "b"):
        ok(d, "POST", "/v1/tenants", {"id": tid, "engine": "simulator"}, 201)
    sync_until(lambda: set(d.states().values()) == {"connected"}, 10)
    token_b = ok(d, "POST", "/v1/tenants/b/tokens", status=201)["token"]
    lid = sim(d, "a", action="contacts", phones=["15550001111", "15550002222"])["contacts"][0][
        "lid"
    ]

    # lookup: 51 numbers refused; cached the second time (the simulator counts queries)
    code, body = d.call("POST", "/v1/tenants/a/lookup", {"phones": ["15550001111"] * 51})
    assert code == 400 and body["error"]["code"] == "invalid_field"
    phones = {"phones": ["15550001111", "15559999999"]}
    first = ok(d, "POST", "/v1/tenants/a/lookup", phones)["results"]
    assert [(r["on_whatsapp"], r["lid"]) for r in first] == [(True, lid), (False, None)]
    assert ok(d, "POST", "/v1/tenants/a/lookup", phones)["results"] == first
    assert sim(d, "a", action="server")["calls"]["lookup"] == 1

    # a LID-addressed message gets the phone once the mapping is known (the lookup taught it)
    sim(d, "a", action="message", chat=lid, text="hello from a LID")
    sync_until(lambda: ok(d, "GET", "/v1/tenants/a/messages")["messages"], 10)
    msg = ok(d, "GET", "/v1/tenants/a/messages")["messages"][0]
    assert msg["sender"] == lid and msg["sender_alt"] == "15550001111@s.whatsapp.net"

    # contacts and pictures
    contact = ok(d, "GET", f"/v1/tenants/a/contacts/{lid}")
    assert contact["phone"] == "15550001111@s.whatsapp.net"
    assert ok(d, "GET", "/v1/tenants/a/contacts")["contacts"]
    code, ctype, png = as_tenant(d, TOKEN, "GET", "/v1/tenants/a/contacts/15550001111/picture")
    assert code == 200 and ctype == "image/png" and png.startswith(b"\x89PNG")
    assert as_tenant(d, TOKEN, "GET", "/v1/tenants/a/contacts/15559999999/picture")[0] == 404

    # groups: a simulated one, a created one, participants, invite, leave, join
    sim(d, "a", action="group", jid=GROUP, subject="Sim group", participants=["15550002222"])
    sync_until(lambda: len(ok(d, "GET", "/v1/tenants/a/groups")["groups"]) == 1, 10)
    made = ok(
        d, "POST", "/v1/tenants/a/groups", {"subject": "New", "participants": ["15550001111"]}, 201
    )
    jid = made["jid"]
    res = ok(
        d,
        "POST",
        f"/v1/tenants/a/groups/{jid}/participants",
        {"action": "add", "participants": ["15550002222"]},
    )
    assert res["results"][0]["ok"] is True
    info = ok(d, "GET", f"/v1/tenants/a/groups/{jid}")
    assert {p["role"] for p in info["participants"]} == {"superadmin", "member"}
    link = ok(d, "GET", f"/v1/tenants/a/groups/{jid}/invite")["link"]
    link = ok(d, "DELETE", f"/v1/tenants/a/groups/{jid}/invite")["link"]
    ok(d, "POST", f"/v1/tenants/a/groups/{jid}/leave")
    assert ok(d, "POST", "/v1/tenants/a/groups/join", {"invite": link})["jid"] == jid
    assert len(ok(d, "GET", "/v1/tenants/a/groups")["groups"]) == 2

    # settings
    t = ok(d, "PATCH", "/v1/tenants/a", {"reject_calls": True, "proxy": "socks5://u:pw@h:1080"})
    assert t["settings"]["proxy"] == "socks5://u:***@h:1080"
    assert sim(d, "a", action="call", **{"from": "15550001111"})["rejected"] is True

    # tenant b's token sees none of it: 404 on every route, as for a missing tenant
    routes = [
        ("POST", "/v1/tenants/a/lookup", {"phones": ["15550001111"]}),
        ("GET", "/v1/tenants/a/contacts", None),
        ("GET", f"/v1/tenants/a/contacts/{lid}", None),
        ("GET", "/v1/tenants/a/contacts/15550001111/picture", None),
        ("GET", "/v1/tenants/a/groups", None),
        ("POST", "/v1/tenants/a/groups", {"subject": "x"}),
        ("POST", "/v1/tenants/a/groups/join", {"invite": link}),
        ("GET", f"/v1/tenants/a/groups/{jid}", None),
        ("POST", f"/v1/tenants/a/groups/{jid}/participants",
         {"action": "remove", "participants": ["15550002222"]}),
        ("GET", f"/v1/tenants/a/groups/{jid}/invite", None),
        ("DELETE", f"/v1/tenants/a/groups/{jid}/invite", None),
        ("POST", f"/v1/tenants/a/groups/{jid}/leave", None),
        ("PATCH", "/v1/tenants/a", {"reject_calls": False}),
    ]  # fmt: skip
    for method, path, body in routes:
        code, _ctype, raw = as_tenant(d, token_b, method, path, body)
        assert code == 404, (method, path, code)
        assert json.loads(raw)["error"]["code"] == "tenant_not_found"
    assert ok(d, "GET", "/v1/tenants/a")["settings"]["reject_calls"] is True  # unchanged

    # restart: settings, the lookup cache and the groups come back from oxyd.sqlite3
    assert d.stop() == 0
    d.start()
    sync_until(lambda: d.states().get("a") == "connected", 10)
    t = ok(d, "GET", "/v1/tenants/a")
    assert t["settings"] == {
        "reject_calls": True,
        "mark_online": False,
        "proxy": "socks5://u:***@h:1080",
    }
    assert ok(d, "POST", "/v1/tenants/a/lookup", phones)["results"] == first
    assert sim(d, "a", action="server")["calls"].get("lookup", 0) == 0
    assert sim(d, "a", action="call", **{"from": "15550001111"})["rejected"] is True
    assert len(ok(d, "GET", "/v1/tenants/a/groups")["groups"]) == 2
    assert d.stop() == 0
