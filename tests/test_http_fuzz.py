"""No input makes the control port answer 5xx, and every answer matches the OpenAPI document.

Two fuzzers: hypothesis throws random JSON bodies, paths and query strings at every route of
the router in-process; schemathesis (generating from openapi.json) drives a real TCP server of
the real app with simulator tenants, and checks status codes, content types, headers and bodies
against the document, plus that data violating the document is refused.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import quote

import pytest
from aiohttp import web
from helpers import BODY_FIELDS, json_values
from http_helpers import ADMIN, Harness
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from oxyd.http import openapi
from oxyd.http.server import make_app

JSON = json_values(max_leaves=12)
FIELDS = BODY_FIELDS
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5).map(lambda d: json.dumps(d)),
    JSON.map(json.dumps),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)
SEGMENT = st.one_of(
    st.sampled_from(["sim1", "other", "..", "%2e%2e", "A", "a" * 70, "%00", "%ff", "é", ""]),
    st.text(max_size=12).map(lambda s: s.replace("/", "%2F").replace("?", "%3F")),
)
QUERY = st.dictionaries(
    st.sampled_from(["limit", "cursor", "chat", "purge", "x"]), st.text(max_size=12), max_size=3
)


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await Harness.start(tmp_path, monkeypatch)
    await harness.add("sim1")
    yield harness
    await harness.close()


def _templates(h) -> list[tuple[str, str]]:
    return sorted(
        {
            (r.method, r.resource.canonical)
            for r in make_app(h.app).router.routes()
            if r.method not in ("HEAD", "*")
            and r.resource is not None
            # a never-ending stream; fuzzed by test_page's bounded reads
            and r.resource.canonical != "/v1/events"
        }
    )


async def test_random_requests_never_5xx(h):
    templates = _templates(h)
    tok = await h.token("sim1")
    loop = asyncio.get_running_loop()
    seen: list[tuple] = []

    # hypothesis drives a sync function; each example runs a request on this test's loop
    # from a worker thread (the loop stays free to serve it).
    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(
        route=st.sampled_from(templates),
        seg=SEGMENT,
        body=BODIES,
        query=QUERY,
        who=st.sampled_from([ADMIN, "tok", None, "bad"]),
        method=st.sampled_from([None, "PATCH", "GET", "POST"]),
    )
    def check(route, seg, body, query, who, method):
        token = tok if who == "tok" else who
        verb = method or route[0]
        path = route[1].replace("{id}", seg) + (
            "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        )
        status, text = asyncio.run_coroutine_threadsafe(
            _send(h, verb, path, token, body), loop
        ).result(10)
        seen.append((verb, path, status))
        assert status < 500, (verb, path, body, text)
        if status >= 400:
            assert set(json.loads(text)) == {"error"}, text

    await asyncio.to_thread(check)
    assert len(seen) >= 300


async def _send(h, method, path, token, body):
    from yarl import URL

    # Clients percent-encode what HTTP forbids in a request line (non-ASCII, spaces,
    # controls); raw bytes would be refused by aiohttp's parser before any of our code.
    url = URL(quote(path, safe="/%?=&:@!$'()*+,;~-._[]"), encoded=True)
    r = await h.req(method, url, token=token, data=body.encode("utf-8", "surrogatepass"))
    return r.status, await r.text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _schemathesis(base_url: str, budget_s: float) -> list[str]:
    import requests
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    doc = requests.get(base_url + "/v1/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    session = requests.Session()
    failures: list[str] = []
    end = time.monotonic() + budget_s

    def revive() -> None:  # earlier operations may have removed or logged out the tenant
        session.post(
            base_url + "/v1/tenants",
            json={"id": "sim1", "engine": "simulator"},
            headers=auth,
            timeout=10,
        )

    runs = [
        (GenerationMode.POSITIVE, {"id": "sim1"}),
        (GenerationMode.POSITIVE, None),
        (GenerationMode.NEGATIVE, None),
        (GenerationMode.NEGATIVE, {"id": "sim1"}),
    ]
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path == "/v1/events":
            continue  # a never-ending stream; its auth and shape are tested in test_page
        for mode, params in runs:
            if time.monotonic() > end:
                failures.append("time budget exhausted before every operation ran")
                return failures
            revive()
            strategy = op.as_strategy(
                generation_mode=mode,
                headers=auth,
                path_parameters=params if "{id}" in op.path else None,
            )

            @settings(
                max_examples=12,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate],
            )
            @given(case=strategy)
            def run(case):
                case.call_and_validate(base_url=base_url, session=session, checks=checks)

            try:
                run()
            except Unsatisfiable:
                pass  # nothing to negate: no parameters or body, or the id is fixed
            except Exception as e:  # collect all, report at once
                failures.append(f"{op.label} {mode.value} {params}: {str(e)[:1500]}")
    return failures


async def test_schemathesis_against_live_server(tmp_path, monkeypatch):
    h = await Harness.start(tmp_path, monkeypatch)
    # The real dispatcher's dead/replay work on the store alone, so it need not be started
    # (a 503 webhooks_unavailable would count as a server error).
    from oxyd.webhooks import Dispatcher

    h.app.extras["webhooks"] = Dispatcher(h.app.store, h.app.cfg.webhooks, h.app.clock)
    runner = web.AppRunner(make_app(h.app), access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await h.add("sim1")
        failures = await asyncio.to_thread(_schemathesis, f"http://127.0.0.1:{port}", 240)
        assert not failures, "\n\n".join(failures)
    finally:
        await runner.cleanup()
        await h.close()
    assert openapi.document(make_app(h.app).router.routes())["openapi"] == "3.1.0"
