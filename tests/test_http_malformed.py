"""Requests aiohttp's own parser refuses still get the JSON error format (raw sockets: no
client library would send these)."""

from __future__ import annotations

import asyncio
import json

import pytest
from http_helpers import ADMIN, Harness

from oxyd.http.protocol import JsonErrorsRunner
from oxyd.http.server import make_app


@pytest.fixture
async def port(tmp_path, monkeypatch):
    h = await Harness.start(tmp_path, monkeypatch)
    await h.add("sim1")
    runner = JsonErrorsRunner(make_app(h.app), access_log=None)
    await runner.setup()
    from aiohttp import web

    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]
    await runner.cleanup()
    await h.close()


async def raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def _json_error(headers: dict[str, str], body: bytes) -> dict:
    assert headers["content-type"].startswith("application/json"), (headers, body)
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    return doc["error"]


AUTH = f"Authorization: Bearer {ADMIN}\r\n".encode()


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        # an unsupported Content-Encoding on a body
        (
            b"POST /v1/tenants/sim1/stop HTTP/1.1\r\nHost: x\r\n"
            + AUTH
            + b"Connection: close\r\nContent-Encoding: zstd-nope\r\nContent-Length: 2\r\n\r\n{}",
            415,
            None,
        ),
        # gzip that is not gzip
        (
            b"POST /v1/tenants/sim1/stop HTTP/1.1\r\nHost: x\r\n"
            + AUTH
            + b"Connection: close\r\nContent-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot-gzip",
            400,
            None,
        ),
        # a header line far past aiohttp's limit
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 400, None),
        # a request line far past the limit
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        # broken chunked encoding (a chunk size that is not hex)
        (
            b"POST /v1/tenants/sim1/stop HTTP/1.1\r\nHost: x\r\n"
            + AUTH
            + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            400,
            None,
        ),
        # not HTTP at all
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400, None),
        # a malformed header (no colon)
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n", 400, None),
    ],
    ids=[
        "content-encoding",
        "bad-gzip",
        "long-header",
        "long-request-line",
        "bad-chunking",
        "tls",
        "header",
    ],
)
async def test_parser_rejections_answer_json(port, request_bytes, status, code):
    got, headers, body = await raw(port, request_bytes)
    assert got == status, body
    err = _json_error(headers, body)
    assert err["code"] and err["message"]
    assert b"aaaa" not in body  # never echoes what it refused


async def test_a_good_request_on_the_same_server(port):
    got, _, body = await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got == 200 and json.loads(body) == {"status": "ok"}
