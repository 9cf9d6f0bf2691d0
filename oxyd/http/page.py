"""The status page (GET /) and its live feed (GET /v1/events, Server-Sent Events).

The page is one static file read at import. Its inline <script> and <style> are allowed by
their SHA-256 hashes in a strict Content-Security-Policy, so nothing else can run or style it.

The feed is authenticated by the auth middleware (Bearer header: the page reads it with fetch(),
not EventSource, so the token never appears in a URL). A tenant token gets its own tenant only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from importlib import resources
from typing import Any

from aiohttp import web

from oxyd.http import shapes as s
from oxyd.http.keys import APP, TOKEN_TENANT
from oxyd.http.operation import Input, operation

table = web.RouteTableDef()

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and the page's watchdog happy
TICK_S = 1.0  # how often an idle stream checks for a gone client or a stopping daemon
QUEUE_MAX = 1000  # events buffered per stream; a client that falls this far behind is dropped
WRITE_TIMEOUT_S = 10.0  # a client whose socket stays full this long is gone (or stuck): end it
# Open streams: their stop event -> the tenant whose token opened it (None: the admin's).
STREAMS: web.AppKey[dict[asyncio.Event, str | None]] = web.AppKey("oxyd_page_streams", dict)

HTML = resources.files("oxyd.http").joinpath("status.html").read_bytes()


def _hashes(tag: str) -> str:
    blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), HTML, re.S)
    digests = (base64.b64encode(hashlib.sha256(b).digest()).decode() for b in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests)


CSP = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_hashes('script')}",
        f"style-src {_hashes('style')}",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        # The script never parses HTML from strings: the browser enforces it.
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def setup(web_app: web.Application) -> None:
    """Add the routes and end open event streams when the server shuts down (else a stop
    would wait for aiohttp's shutdown timeout). Call before the app starts."""
    web_app[STREAMS] = {}
    web_app.on_shutdown.append(close_streams)
    web_app.add_routes(table)


async def close_streams(web_app: web.Application) -> None:
    for stop in list(web_app.get(STREAMS, ())):
        stop.set()


def close_tenant_streams(web_app: web.Application, tenant_id: str) -> int:
    """End every stream opened with a token of this tenant: after its tokens are revoked or
    the tenant is deleted, an open stream must not keep talking. Returns how many."""
    streams = web_app.get(STREAMS, {})
    mine = [stop for stop, own in streams.items() if own == tenant_id]
    for stop in mine:
        stop.set()
    return len(mine)


@operation(
    table.get,
    "/",
    "The status page (HTML; it asks for a token and sends it as a Bearer header)",
    access="open",
    ok=(200, {"description": "HTML", "content": {"text/html": {"schema": s.STR}}}),
)
async def page(request: web.Request, inp: Input) -> web.Response:
    return web.Response(
        body=HTML, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
    )


def _frame(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _send(resp: web.StreamResponse, data: bytes) -> None:
    """Write with a deadline: a peer that stopped reading must not pin this stream (nor the
    daemon's shutdown) until TCP gives up minutes later."""
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await resp.write(data)


SSE_TEXT = (
    "Server-Sent Events. First `event: snapshot`, data `{tenants: [Tenant], health, admin}`;"
    " then as things change `event: state`, data `{type, tenant, data: Tenant}`;"
    " `event: pairing`, data `{type, tenant, pairing: {qr, code, expires_ms}}`;"
    " `event: removed`, data `{type, tenant}`. A comment line (`: keep-alive`) every 15 s"
    " when idle. A tenant token gets its own tenant only. The stream ends when the daemon"
    " stops, when the client falls 1000 events behind (reconnect for a new snapshot), or when"
    " the token is revoked."
)


@operation(
    table.get,
    "/v1/events",
    "Live state and pairing updates (Server-Sent Events)",
    description=SSE_TEXT,
    ok=(200, {"description": SSE_TEXT, "content": {"text/event-stream": {"schema": s.STR}}}),
)
async def events(request: web.Request, inp: Input) -> web.StreamResponse:
    sup = request.app[APP].supervisor
    own = request[TOKEN_TENANT]  # None: the admin, who sees everything
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
    stop = asyncio.Event()
    streams = request.app.get(STREAMS)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            "X-Content-Type-Options": "nosniff",
        }
    )
    sup.listeners.add(queue)  # before the snapshot: no change can fall between the two
    if streams is not None:
        streams[stop] = own
    try:
        await resp.prepare(request)
        if own is None:
            snapshot = {"tenants": sup.tenants(), "health": sup.last_health, "admin": True}
        else:
            r = sup.runners.get(own)
            tenants = [sup.tenant_json(r)] if r is not None else []
            snapshot = {"tenants": tenants, "health": None, "admin": False}
        await _send(resp, _frame("snapshot", snapshot))
        await _pump(request, resp, queue, stop, own)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away: nothing left to tell it
    except TimeoutError:
        if request.transport is not None:  # it stopped reading: drop it without a goodbye
            request.transport.abort()
    finally:
        sup.listeners.discard(queue)
        if streams is not None:
            streams.pop(stop, None)
    return resp


async def _pump(
    request: web.Request,
    resp: web.StreamResponse,
    queue: asyncio.Queue[dict[str, Any]],
    stop: asyncio.Event,
    own: str | None,
) -> None:
    """Forward events until the client leaves, the daemon stops, or this stream is dropped."""
    sup = request.app[APP].supervisor
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait(
                {getter, stopping}, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not getter.done():
                getter.cancel()
            elif not stop.is_set():
                ev = getter.result()
                if own is None or ev.get("tenant") == own:
                    await _send(resp, _frame(ev["type"], ev))
                    last_write = loop.time()
                continue  # drain what is queued before looking at the exits
            transport = request.transport
            if stop.is_set() or not sup.running or transport is None or transport.is_closing():
                return
            if queue not in sup.listeners:
                return  # dropped by publish() for falling behind: the page reconnects
            if loop.time() - last_write >= KEEPALIVE_S:
                if own is not None and not await _still_allowed(request, own):
                    return
                await _send(resp, b": keep-alive\n\n")
                last_write = loop.time()
    finally:
        stopping.cancel()


async def _still_allowed(request: web.Request, own: str) -> bool:
    """A revocation closes open streams at once (close_tenant_streams); this catches the one
    whose token was checked just before the revocation committed, within KEEPALIVE_S."""
    app = request.app[APP]
    if own not in app.supervisor.runners:
        return False
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return await app.store.token_tenant(token) == own
