"""The OpenAPI document stays true: every route of the router is in it, and it is valid."""

from __future__ import annotations

import pytest
from http_helpers import Harness

from oxyd.http import openapi
from oxyd.http.server import make_app


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await Harness.start(tmp_path, monkeypatch)
    yield harness
    await harness.close()


async def test_every_route_is_documented(h):
    doc = openapi.document(make_app(h.app).router.routes())
    missing = []
    for route in make_app(h.app).router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue  # HEAD is implied by GET
        path = route.resource.canonical
        if route.method.lower() not in doc["paths"].get(path, {}):
            missing.append(f"{route.method} {path}")
    assert not missing, f"routes missing from openapi.py: {missing}"
    # and nothing documented that the router does not serve
    served = {(r.method.lower(), r.resource.canonical) for r in make_app(h.app).router.routes()}
    for path, item in doc["paths"].items():
        for method in item:
            assert (method, path) in served, (method, path)


async def test_served_open_and_valid(h):
    r = await h.req("GET", "/v1/openapi.json", token=None)
    assert r.status == 200
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    import schemathesis

    schema = schemathesis.openapi.from_dict(doc)
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) == sum(len(item) for item in doc["paths"].values())


async def test_every_error_response_uses_the_error_schema(h):
    for path, item in openapi.document(make_app(h.app).router.routes())["paths"].items():
        for method, op in item.items():
            for status, resp in op["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    schema = resp["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)


def test_every_simulator_action_has_a_variant_with_its_fields():
    """The simulate body's schema (oxyd/http/simulate.py) follows the simulator's actions: an
    action without a variant would be refused, a field not in it too."""
    from oxyd.http.simulate import VARIANTS
    from oxyd.simulator.engine import _ACTIONS

    assert set(VARIANTS) == set(_ACTIONS)
    for name, (fields, _) in _ACTIONS.items():
        assert set(VARIANTS[name][0]) == set(fields), name
