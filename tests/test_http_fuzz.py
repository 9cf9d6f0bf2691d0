"""No input makes the control port answer 5xx, and every answer matches the OpenAPI document.

hypothesis throws random JSON bodies, paths and query strings at every route of the router
in-process. schemathesis with every check against the real daemon is test_schemathesis.py.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from helpers import BODY_FIELDS, json_values
from http_helpers import ADMIN, Harness
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

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
