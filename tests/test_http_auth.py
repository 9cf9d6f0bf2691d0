"""The auth matrix of design §6 for every route of the router: no token / wrong token 401,
admin ok, own tenant ok (or 403 on admin-only routes), other tenant 404."""

from __future__ import annotations

import pytest
from http_helpers import Harness

from oxyd.http.access import OPEN_PATHS

ADMIN_ONLY = {
    ("GET", "/metrics"),
    ("POST", "/v1/tenants"),
    ("DELETE", "/v1/tenants/{id}"),
    ("POST", "/v1/tenants/{id}/tokens"),
    ("DELETE", "/v1/tenants/{id}/tokens"),
    ("GET", "/v1/health"),
    ("GET", "/v1/backups"),
    ("POST", "/v1/backups"),
    ("GET", "/v1/tenants/{id}/archive"),
    ("PUT", "/v1/tenants/{id}/archive"),
}
# Never-ending responses: their auth is tested in test_page.py.
STREAMS = {("GET", "/v1/events")}
# Bodies that succeed (or fail for a reason other than auth) on each route.
BODIES = {
    ("POST", "/v1/tenants/{id}/messages"): {"to": "15551234567", "text": "hi"},
    ("PUT", "/v1/tenants/{id}/webhook"): {"url": "http://127.0.0.1:9/h", "secret": "s"},
    ("POST", "/v1/tenants/{id}/simulate"): {"action": "message", "chat": "1555", "text": "x"},
    ("POST", "/v1/tenants"): {"id": "fresh", "engine": "simulator"},
    ("PATCH", "/v1/tenants/{id}"): {"mark_online": True},
    ("POST", "/v1/tenants/{id}/lookup"): {"phones": ["15550001111"]},
    ("POST", "/v1/tenants/{id}/groups"): {"subject": "s", "participants": ["15550001111"]},
    ("POST", "/v1/tenants/{id}/groups/join"): {"invite": "AbCdEfGhIjKlMnOp"},
    ("PATCH", "/v1/tenants/{id}/messages/{msg_id}"): {"text": "edited"},
    ("POST", "/v1/tenants/{id}/messages/{msg_id}/reaction"): {"emoji": "👍"},
    ("POST", "/v1/tenants/{id}/chats/{chat}/presence"): {"state": "composing"},
    ("POST", "/v1/tenants/{id}/groups/{jid}/participants"): {
        "action": "add",
        "participants": ["15550002222"],
    },
}
GROUP = "120363000000000001@g.us"
# A JID in the path: a group for the group routes, a number for the contact routes.
JIDS = {"groups": GROUP, "contacts": "15550001111"}
# Other path parameters: values of the right shape for resources that may not exist.
PARAMS = {"{sha256}": "0" * 64, "{msg_id}": "3EB0000000000000000000", "{chat}": "15550001111"}


@pytest.fixture
async def h(tmp_path, monkeypatch):
    # The webhook body targets 127.0.0.1, which a tenant token may set only with this on.
    harness = await Harness.start(tmp_path, monkeypatch, OXYD_WEBHOOKS_ALLOW_PRIVATE="true")
    yield harness
    await harness.close()


async def _no_webhook(r) -> bool:
    """A 404 about a resource inside the tenant (no webhook, group left, no such media): the
    auth passed; only tenant_not_found would mean it did not."""
    return r.status == 404 and (await r.json())["error"]["code"] != "tenant_not_found"


def _path(template: str, tid: str) -> str:
    for segment, jid in JIDS.items():
        template = template.replace(f"/{segment}/{{jid}}", f"/{segment}/{jid}")
    for param, value in PARAMS.items():
        template = template.replace(param, value)
    return template.replace("{id}", tid)


async def _people(h, tid: str) -> None:
    """What the people and group routes of `tid` act on, in the simulated WhatsApp."""
    for action in (
        {"action": "contacts", "phones": ["15550001111", "15550002222"]},
        {"action": "group", "jid": GROUP, "subject": "g", "participants": ["15550001111"]},
    ):
        r = await h.req("POST", f"/v1/tenants/{tid}/simulate", json=action)
        assert r.status == 202, await r.text()


def routes(h) -> list[tuple[str, str]]:
    from oxyd.http.server import make_app

    out = set()
    for route in make_app(h.app).router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        out.add((route.method, route.resource.canonical))
    return sorted(out - STREAMS)


async def test_matrix_for_every_route(h):
    await h.add("own")
    await h.add("other", connected=False)
    own = await h.token("own")
    await _people(h, "own")
    all_routes = routes(h)
    assert len(all_routes) >= 25
    for method, template in all_routes:
        body = BODIES.get((method, template))
        kw = {"json": body} if body is not None else {}
        if template in OPEN_PATHS:
            r = await h.req(method, template, token=None)
            assert r.status == 200, (method, template)
            continue
        path = _path(template, "own")
        for token in (None, "wrong-token", "oxt_" + "x" * 43):
            r = await h.req(method, path, token=token, **kw)
            assert r.status == 401, (method, template, token, r.status)
            assert (await r.json())["error"]["code"] == "unauthorized"
        r = await h.req(method, path, token=own, **kw)
        if (method, template) in ADMIN_ONLY:
            assert r.status == 403, (method, template, r.status)
            assert (await r.json())["error"]["code"] == "forbidden"
        else:
            # 409: state (earlier routes stopped it); 503: no dispatcher; 404: webhook deleted.
            assert r.status in (200, 201, 202, 409, 503) or await _no_webhook(r), (method, template)
        if "{id}" in template:
            r = await h.req(method, _path(template, "other"), token=own, **kw)
            want = 403 if (method, template) in ADMIN_ONLY else 404
            assert r.status == want, (method, template, r.status)
            r = await h.req(method, _path(template, "missing"), token=own, **kw)
            assert r.status == want, (method, template, r.status)


async def test_admin_reaches_every_route(h):
    await h.add("own")
    await _people(h, "own")
    for method, template in routes(h):
        if (method, template) == ("DELETE", "/v1/tenants/{id}"):
            continue  # removing it would 404 the routes after it; tested in test_http
        body = BODIES.get((method, template))
        kw = {"json": body} if body is not None else {}
        r = await h.req(method, _path(template, "own"), **kw)
        assert r.status in (200, 201, 202, 409, 503) or await _no_webhook(r), (method, template)
        assert r.status < 500 or (await r.json())["error"]["code"] == "webhooks_unavailable"


async def test_revoked_and_removed_tenant_tokens_stop_working(h):
    await h.add("own", connected=False)
    tok = await h.token("own")
    assert (await h.req("GET", "/v1/tenants/own", token=tok)).status == 200
    assert (await h.req("DELETE", "/v1/tenants/own")).status == 200
    assert (await h.req("GET", "/v1/tenants", token=tok)).status == 401
