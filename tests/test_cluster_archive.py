"""The tenant archive (GET/PUT /v1/tenants/{id}/archive): complete, generic over the tables
of oxyd.sqlite3, and refused whole when damaged."""

from __future__ import annotations

import io
import sqlite3
import tarfile

import pytest
from helpers import until
from http_helpers import Harness


@pytest.fixture
async def pair(tmp_path, monkeypatch):
    a = await Harness.start(tmp_path / "a", monkeypatch)
    b = await Harness.start(tmp_path / "b", monkeypatch)
    yield a, b
    await a.close()
    await b.close()


def _later_table(h: Harness) -> sqlite3.Connection:
    """A table another feature adds by a later migration: only its `tenant` column is known."""
    con = sqlite3.connect(h.app.store.path)
    con.execute("CREATE TABLE IF NOT EXISTS later_feature (tenant TEXT, k TEXT, v BLOB)")
    con.commit()
    return con


async def _export(h: Harness, tid: str) -> bytes:
    r = await h.req("GET", f"/v1/tenants/{tid}/archive")
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "application/x-tar"
    return await r.read()


async def test_a_tenant_moves_between_daemons_with_every_row_and_file(pair):
    a, b = pair
    await a.add("shop")
    await a.add("other")
    r = await a.req(
        "POST",
        "/v1/tenants/shop/simulate",
        json={"action": "message", "chat": "15550001111", "text": "hi", "count": 30},
    )
    assert r.status == 202
    await until(lambda: a.app.supervisor.runners["shop"].t.messages_stored == 30)
    token = await a.token("shop")
    hook = {"url": "http://127.0.0.1:9/hook", "secret": "s3cret-s3cret"}
    assert (await a.req("PUT", "/v1/tenants/shop/webhook", json=hook)).status == 200
    con = _later_table(a)
    con.executemany(
        "INSERT INTO later_feature VALUES (?,?,?)",
        [("shop", "k1", b"\x00\x01"), ("shop", "k2", None), ("other", "k3", b"x")],
    )
    con.commit()
    con.close()
    _later_table(b).close()
    before = await (await a.req("GET", "/v1/tenants/shop/messages?limit=1000")).json()
    jid = a.app.supervisor.runners["shop"].t.jid

    data = await _export(a, "shop")
    await until(lambda: a.app.supervisor.runners["shop"].t.state == "connected")  # back up
    r = await b.req("PUT", "/v1/tenants/shop/archive", data=data)
    assert r.status == 201, await r.text()
    await until(lambda: b.app.supervisor.runners["shop"].t.state == "connected")
    assert b.app.supervisor.runners["shop"].t.jid == jid  # same simulated account
    after = await (await b.req("GET", "/v1/tenants/shop/messages?limit=1000")).json()
    assert [m["id"] for m in after["messages"]] == [m["id"] for m in before["messages"]]
    r = await b.req("GET", "/v1/tenants/shop", token=token)  # its token came along
    assert r.status == 200
    r = await b.req("GET", "/v1/tenants/shop/webhook")
    assert r.status == 200 and (await r.json())["url"] == hook["url"]
    con = sqlite3.connect(b.app.store.path)
    rows = con.execute("SELECT tenant, k, v FROM later_feature ORDER BY k").fetchall()
    con.close()
    assert rows == [("shop", "k1", b"\x00\x01"), ("shop", "k2", None)]

    r = await b.req("PUT", "/v1/tenants/shop/archive", data=data)
    assert r.status == 409 and (await r.json())["error"]["code"] == "tenant_exists"
    r = await b.req("GET", "/v1/tenants/shop/archive", token=token)
    assert r.status == 403  # admin only


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


async def test_damaged_or_foreign_archives_are_refused_whole(pair):
    a, b = pair
    await a.add("shop")
    data = await _export(a, "shop")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = members["manifest.json"]
    cases = {
        "flipped byte": bytes(flipped),
        "truncated": data[: len(data) // 3],
        "not a tar": b"hello world" * 100,
        "empty": b"",
        "escape": _tar({"manifest.json": manifest, "../../evil": b"x"}),
        "extra member": _tar({**members, "files/extra": b"x"}),
        "missing member": _tar({k: v for k, v in members.items() if k != "rows.sqlite3"}),
        "manifest not first": _tar({"rows.sqlite3": members["rows.sqlite3"], **members}),
    }
    for what, body in cases.items():
        r = await b.req("PUT", "/v1/tenants/shop/archive", data=body)
        assert r.status == 400, (what, r.status, await r.text())
        assert (await r.json())["error"]["code"] == "invalid_archive", what
    r = await b.req("PUT", "/v1/tenants/elsewhere/archive", data=data)
    assert r.status == 400 and (await r.json())["error"]["code"] == "archive_mismatch"
    # Nothing of any refused archive landed.
    assert "shop" not in b.app.supervisor.runners
    assert not (b.app.cfg.data_dir / "tenants" / "shop").exists()
    con = sqlite3.connect(b.app.store.path)
    assert con.execute("SELECT count(*) FROM tenants").fetchone()[0] == 0
    con.close()
    r = await b.req("PUT", "/v1/tenants/shop/archive", data=data)  # the good one still does
    assert r.status == 201


async def test_invalid_ids_and_missing_tenants(pair):
    a, _ = pair
    assert (await a.req("GET", "/v1/tenants/nope/archive")).status == 404
    assert (await a.req("PUT", "/v1/tenants/Bad!/archive", data=b"x")).status == 400
