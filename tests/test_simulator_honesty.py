"""The simulator says what it does: every id of a `count` message, and a new tenant that is
about to connect by itself answers `connecting`, not `new`."""

from __future__ import annotations

import pytest
from http_helpers import Harness


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await Harness.start(tmp_path, monkeypatch)
    yield harness
    await harness.close()


async def test_new_simulator_tenant_answers_connecting(h):
    r = await h.req("POST", "/v1/tenants", json={"id": "fresh", "engine": "simulator"})
    assert r.status == 201
    assert (await r.json())["state"] == "connecting"


async def test_count_returns_every_id_and_the_cap_is_400(h):
    await h.add("sim1")
    path = "/v1/tenants/sim1/simulate"
    body = {"action": "message", "chat": "15551234567", "text": "x", "count": 2500}
    r = await h.req("POST", path, json=body)
    assert r.status == 202
    ids = (await r.json())["ids"]
    assert len(ids) == 2500 and len(set(ids)) == 2500
    r = await h.req("POST", path, json={**body, "count": 100_001})
    assert r.status == 400 and (await r.json())["error"]["message"].startswith("count")
