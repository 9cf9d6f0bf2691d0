"""The control port's app factory and listener.

Handlers live in routes*.py (and page, metrics, openapi); they read the App through
`request.app[APP]` (http/keys.py) and hold no state. Shared request helpers are in inputs.py,
access checks in access.py, the error format in replies.py and middleware.py: this module
imports them all and nothing imports it back.
"""

from __future__ import annotations

import socket

from aiohttp import web

from oxyd.app import App
from oxyd.http import (
    media,
    metrics,
    openapi,
    page,
    people,
    routes,
    routes_archive,
    routes_data,
    routes_operator,
    routes_pairing,
    routes_webhook,
    sending,
    settings,
    simulate,
)
from oxyd.http.access import auth
from oxyd.http.keys import APP
from oxyd.http.middleware import errors, invalidate_on_write, metrics_middleware
from oxyd.http.protocol import JsonErrorsRunner


def make_app(app: App) -> web.Application:
    registry = metrics.Metrics(app)
    list_cache = routes.ListCache()
    # Bodies are read through read_limited (per-route limits: media sends may be larger).
    media_limit = app.cfg.send.max_media_bytes * 4 // 3 + 64 * 1024
    web_app = web.Application(
        middlewares=[
            metrics_middleware(registry.observe_request),
            invalidate_on_write(list_cache),
            errors,
            # Cluster mode routes a tenant's requests to its node before any token check.
            *app.extras.get("middlewares", ()),
            auth,
        ],
        client_max_size=max(app.cfg.http.max_body_bytes, media_limit),
    )
    web_app[APP] = app
    web_app[metrics.METRICS] = registry
    web_app[routes.LIST_CACHE] = list_cache
    web_app.add_routes(routes.table)
    web_app.add_routes(routes_pairing.table)
    web_app.add_routes(routes_operator.table)
    web_app.add_routes(simulate.table)
    page.setup(web_app)  # GET /, GET /v1/events, and ends event streams at shutdown
    web_app.add_routes(routes_data.table)
    web_app.add_routes(routes_webhook.table)
    web_app.add_routes(media.table)
    web_app.add_routes(settings.table)
    people.setup(web_app)
    web_app.add_routes(sending.table)
    web_app.add_routes(metrics.table)
    web_app.add_routes(openapi.table)
    web_app.add_routes(routes_archive.table)
    for extra in app.extras.get("route_tables", ()):
        web_app.add_routes(extra)
    # Built once from the routes this app really serves (routes cannot change after start).
    web_app[openapi.DOCUMENT] = openapi.document(web_app.router.routes())
    return web_app


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host`, taken before any tenant starts: a port
    in use must stop the daemon at once, not after it connected every session. Connections
    that arrive before serve() wait in the backlog instead of being refused."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(512)
            s.setblocking(False)
    except OSError as e:
        for s in socks:
            s.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return socks


async def serve(app: App, socks: list[socket.socket] | None = None) -> web.AppRunner:
    runner = JsonErrorsRunner(make_app(app), access_log=None, handle_signals=False)
    await runner.setup()
    if socks is None:
        socks = bind(app.cfg.http.host, app.cfg.http.port)
    for sock in socks:
        await web.SockSite(runner, sock).start()
    return runner
