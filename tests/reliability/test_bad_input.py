"""Bad input: random requests against every route never answer 5xx, never crash the daemon,
never touch another tenant's data, and never touch the file system outside the data directory.

An in-process app (real SQLite, simulator engine, aiohttp TestClient) holds a "victim" tenant
(messages, a webhook, a token, a device store) that the fuzzer may never legitimately change:
the admin token is never aimed at it, and the other tokens are another tenant's or invalid.
Hypothesis draws the route (every route of the router), the method, the {id} segment (path
traversal attempts included), the query, the body, extra headers and the token. Before and
after: the victim's messages, chats, tenant row, webhook and device store, and the whole tree
around the data directory, are compared.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote, unquote

import aiohttp
import pytest
from helpers import BODY_FIELDS, json_values
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from reliakit import scale, tree, until
from yarl import URL

from oxyd import app as oxyd_app
from oxyd.clock import RealClock
from oxyd.config import load
from oxyd.http.server import make_app
from oxyd.model import State, valid_tenant_id
from oxyd.simulator.engine import SimulatorEngine

pytestmark = pytest.mark.timeout(scale(170, 1200))

ADMIN = "bad-input-admin-token-0123456789"
VICTIM = "victim"
EXAMPLES = scale(1000, 10000)
TRAVERSAL = [
    "..",
    ".",
    "../..",
    "%2e%2e",
    "%2E%2E",
    "%2e%2e%2f%2e%2e%2fcanary",
    "..%2f..%2fcanary",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "a%2f..%2f..%2fescape",
    "%252e%252e",
    "..%5c..%5ccanary",
    "%00",
    "a%00b",
    "victim%2f..",
    "%c3%a9",  # é
    "%ef%bd%81",  # fullwidth a
    "%e2%80%ae",  # right-to-left override
    "A",
    "-a",
    "_a",
    "a" * 64,
    "a" * 5000,
]
JSON = json_values(max_leaves=10)
FIELDS = BODY_FIELDS
ACTIONS = [
    "message",
    "receipt",
    "disconnect",
    "fail_connects",
    "stall",
    "logout",
    "replace",
    "ban",
    "outdated",
    "history",
    "nope",
]
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5).map(json.dumps),
    st.fixed_dictionaries(
        {"action": st.sampled_from(ACTIONS)},
        optional={
            "count": st.integers(-5, 200),
            "chat": st.text(max_size=8),
            "text": st.text(max_size=8),
            "id": st.text(max_size=8),
            "chats": st.integers(-1, 3),
            "messages": st.integers(-1, 3),
            "expire_s": st.floats(allow_nan=True),
        },
    ).map(json.dumps),
    st.fixed_dictionaries(
        {"id": st.sampled_from([unquote(t) for t in TRAVERSAL]) | st.text(max_size=70)},
        optional={"engine": st.just("simulator")},
    ).map(json.dumps),
    JSON.map(json.dumps),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.just("{" * 5000),
    st.just(""),
)
SEGMENT = st.one_of(
    st.sampled_from([*TRAVERSAL, "fuzz", "zz-new", VICTIM]),
    st.text(max_size=16).map(lambda s: quote(s, safe="")),
    st.text(alphabet="abc.-_%/2e5cf", max_size=20),
)
QUERY = st.dictionaries(
    st.sampled_from(["limit", "cursor", "chat", "purge", "x", "events"]),
    st.text(max_size=12) | st.sampled_from(["-1", "0", "1001", "true", "%00", "9" * 30]),
    max_size=3,
)
HEADER_NAMES = [
    "Content-Type",
    "Accept",
    "Content-Encoding",
    "Accept-Encoding",
    "Origin",
    "Cookie",
    "Range",
    "If-None-Match",
    "X-Forwarded-For",
    "Last-Event-ID",
    "X-Custom",
    "Authorization",
]
HEADER_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
) | st.sampled_from(
    [
        "application/json",
        "image/png",
        "gzip",
        "deflate",
        "br",
        "*/*",
        "text/event-stream",
        "multipart/form-data; boundary=x",
        "Bearer",
        "Bearer  ",
        "Basic YWRtaW46YWRtaW4=",
        "bearer " + ADMIN[:-1],
    ]
)
TOKENS = ["admin", "fuzz", None, "garbage", "long", "latin1", "victim-like"]


async def _snapshot_victim(app) -> dict:
    store = app.store
    msgs, cursor = [], None
    while True:
        page, cursor = await store.messages(VICTIM, None, 1000, cursor)
        msgs += page
        if cursor is None:
            break
    rows = {}
    for table, col in (
        ("tenants", "id"),
        ("webhooks", "tenant"),
        ("chats", "tenant"),
        ("tenant_counts", "tenant"),
        ("tokens", "tenant"),
    ):
        rows[table] = sorted(
            tuple(r)
            for r in await store.ro.execute_fetchall(
                f"SELECT * FROM {table} WHERE {col} = ?", (VICTIM,)
            )
        )
    r = app.supervisor.runners[VICTIM]
    device = (app.cfg.data_dir / "tenants" / VICTIM / "simulator.json").read_bytes()
    return {"messages": msgs, "rows": rows, "state": str(r.t.state), "device": device}


def _check_data_dir(data: Path) -> None:
    """Inside the data directory, tenant folders carry valid ids only, and nothing else grew."""
    for p in (data / "tenants").iterdir():
        assert valid_tenant_id(p.name), f"a tenant folder with an invalid name: {p}"
    allowed = {
        "oxyd.sqlite3",
        "oxyd.sqlite3-wal",
        "oxyd.sqlite3-shm",
        "tenants",
        "backups",
        "admin.token",
        "canary-inside",
        "cluster",  # archives in flight (PUT /v1/tenants/{id}/archive stages its body here)
    }
    extra = {p.name for p in data.iterdir()} - allowed
    assert not extra, f"unexpected files in the data directory: {extra}"


async def test_random_requests_no_5xx_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.setenv("OXYD_ADMIN_TOKEN", ADMIN)
    box = tmp_path / "box"
    data = box / "data"
    box.mkdir()
    (box / "canary").write_text("outside the data directory")
    (tmp_path / "canary").write_text("further outside")
    (box / "tenants").mkdir()  # a decoy with a familiar name next to the data directory
    (box / "tenants" / "canary").write_text("decoy")
    cfg = load(
        env={
            "OXYD_DATA_DIR": str(data),
            "OXYD_SIMULATOR_PAIR_AFTER_MS": "20",
            "OXYD_SUPERVISOR_STOP_GRACE_S": "2",
            "OXYD_SUPERVISOR_BACKOFF_BASE_S": "0.05",
            "OXYD_SUPERVISOR_BACKOFF_CAP_S": "0.1",
        }
    )
    clock = RealClock()
    app = await oxyd_app.build(
        cfg, clock, {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
    )
    await oxyd_app.start(app)
    (data / "canary-inside").write_text("inside, beside tenants/")
    from aiohttp.test_utils import TestClient, TestServer

    client = TestClient(TestServer(make_app(app)))
    await client.start_server()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tokens: dict[str, str | None] = {}

    async def ensure_fuzz() -> None:
        if "fuzz" not in app.supervisor.runners:
            r = await client.post(
                "/v1/tenants", json={"id": "fuzz", "engine": "simulator"}, headers=admin
            )
            assert r.status == 201, await r.text()
            tokens.pop("fuzz", None)
        if "fuzz" not in tokens:
            r = await client.post("/v1/tenants/fuzz/tokens", headers=admin)
            assert r.status == 201, await r.text()
            tokens["fuzz"] = (await r.json())["token"]

    try:
        r = await client.post(
            "/v1/tenants", json={"id": VICTIM, "engine": "simulator"}, headers=admin
        )
        assert r.status == 201
        await until(lambda: app.supervisor.runners[VICTIM].t.state is State.CONNECTED, 10)
        for body in (
            {"action": "message", "chat": "15551230000", "text": "keep me", "count": 50},
            {"action": "message", "chat": "15551230001@g.us", "text": "group", "count": 5},
            {"action": "history", "chats": 2, "messages": 3},
        ):
            r = await client.post(f"/v1/tenants/{VICTIM}/simulate", json=body, headers=admin)
            assert r.status == 202, await r.text()
        r = await client.put(
            f"/v1/tenants/{VICTIM}/webhook",
            headers=admin,
            json={"url": "http://127.0.0.1:9/victim", "secret": "v-secret"},
        )
        assert r.status == 200
        r = await client.post(f"/v1/tenants/{VICTIM}/tokens", headers=admin)
        victim_token = (await r.json())["token"]
        await until(lambda: app.supervisor.runners[VICTIM].t.messages_stored == 61, 10)
        await ensure_fuzz()
        before = await _snapshot_victim(app)
        outside_before = tree(tmp_path, skip=data)
        templates = sorted(
            {
                (rt.method, rt.resource.canonical)
                for rt in make_app(app).router.routes()
                if rt.method not in ("HEAD", "*")
                and rt.resource is not None
                and rt.resource.canonical != "/v1/events"  # never ends; test_page covers it
            }
        )
        assert len(templates) > 20
        loop = asyncio.get_running_loop()
        seen: list[tuple] = []
        plain: list[tuple] = []

        def token_of(who: str | None) -> str | None:
            return {
                "admin": ADMIN,
                "fuzz": tokens.get("fuzz"),
                None: None,
                "garbage": "not-a-token",
                "long": "x" * 100_000,
                "latin1": "t\u00e9st\u00ff",
                "victim-like": victim_token[:-1] + ("A" if victim_token[-1] != "A" else "B"),
            }[who]

        async def send(method, path, body, headers) -> tuple[int, str] | None:
            await ensure_fuzz()
            try:
                url = URL(path, encoded=True)
                async with client.session.request(
                    method,
                    client.make_url(url),
                    data=body.encode("utf-8", "surrogatepass"),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=20),
                ) as resp:
                    return resp.status, await resp.text()
            except (ValueError, TypeError, aiohttp.InvalidURL):
                return None  # the client refused to send it (e.g. a header it cannot encode)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
        @given(
            route=st.sampled_from(templates),
            seg=SEGMENT,
            body=BODIES,
            query=QUERY,
            who=st.sampled_from(TOKENS),
            method=st.sampled_from([None, None, None, "PATCH", "GET", "POST", "PUT", "DELETE"]),
            extra=st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUE, max_size=3),
        )
        def check(route, seg, body, query, who, method, extra):
            # The admin may do anything, so it is never aimed at the victim; other tokens are.
            if who == "admin":
                assume(unquote(unquote(seg)).strip("/") != VICTIM and VICTIM not in unquote(seg))
                if "{id}" not in route[1]:
                    assume(
                        not (route[0] == "POST" and route[1] == "/v1/tenants" and VICTIM in body)
                    )
            headers = dict(extra)
            token = token_of(who)
            if token is not None and "Authorization" not in headers:
                headers["Authorization"] = f"Bearer {token}"
            verb = method or route[0]
            path = route[1].replace("{id}", seg)
            if query:
                path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
            out = asyncio.run_coroutine_threadsafe(send(verb, path, body, headers), loop).result(60)
            assume(out is not None)
            status, text = out
            seen.append((verb, path[:80], status))
            assert status < 500, (verb, path[:200], body[:200], headers, text[:500])
            if status >= 400:
                try:
                    assert set(json.loads(text)) == {"error"}, text[:300]
                except ValueError:
                    # aiohttp's HTTP parser answers some malformed requests itself (e.g. an
                    # undecodable Content-Encoding) in plain text, before any oxyd code runs.
                    assert status == 400, (verb, path[:200], headers, status, text[:300])
                    plain.append((verb, path[:60], headers, text[:120]))

        # Deterministic traversal attempts first: every tenant route, admin token.
        for method, template in templates:
            if "{id}" not in template:
                continue
            for seg in TRAVERSAL:
                status, text = await send(
                    method,
                    template.replace("{id}", seg),
                    "{}",
                    {"Authorization": f"Bearer {ADMIN}"},
                )
                if seg in (".", "..", "../.."):
                    # Literal dot segments are resolved by URL normalization (RFC 3986) before
                    # routing: "/v1/tenants/../.." is "/", another route, never a path.
                    assert status < 500, (method, template, seg, status, text[:300])
                else:
                    assert status in (400, 404, 405, 413), (method, template, seg, status, text)
        for bad in [unquote(t) for t in TRAVERSAL] + ["../x", "a/b", "/abs", "x\n", "ü", ""]:
            r = await client.post(
                "/v1/tenants", json={"id": bad, "engine": "simulator"}, headers=admin
            )
            assert r.status == 400, (bad, r.status, await r.text())
            assert (await r.json())["error"]["code"] == "invalid_tenant_id"
        await asyncio.to_thread(check)
        assert len(seen) >= EXAMPLES // 2, f"only {len(seen)} requests were sent"
        statuses: dict[int, int] = {}
        for *_, s in seen:
            statuses[s] = statuses.get(s, 0) + 1
        print(f"{len(seen)} fuzzed requests, statuses {dict(sorted(statuses.items()))}")
        print(f"{len(plain)} plain-text 400s from aiohttp's parser, e.g. {plain[:2]}")

        # No crash: the daemon still serves, the supervisor and the writer are healthy.
        r = await client.get("/healthz")
        assert r.status == 200
        await app.writer.flush()
        r = await client.get("/readyz")
        assert r.status == 200, await r.text()
        assert app.supervisor.broken is None
        assert app.supervisor.runners[VICTIM].t.state is State.CONNECTED
        after = await _snapshot_victim(app)
        assert after == before, "the victim tenant's data changed"
        assert tree(tmp_path, skip=data) == outside_before, "files outside the data dir changed"
        assert (box / "canary").read_text() == "outside the data directory"
        assert (box / "tenants" / "canary").read_text() == "decoy"
        assert (data / "canary-inside").read_text() == "inside, beside tenants/"
        _check_data_dir(data)
    finally:
        await client.close()
        await oxyd_app.stop(app)
