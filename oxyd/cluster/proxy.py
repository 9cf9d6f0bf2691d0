"""The one API: every node answers every route (design §16).

A request for a tenant this node does not hold goes to the tenant's owner, streamed both
ways (bodies, media with Range, event streams), headers kept, so the owner checks the caller's
token itself (tenant tokens live with their tenant). The owner, when it does not hold the
tenant either (a move in progress, or a node that still has it from before a resize), asks the
others once and forwards again: at most two hops. The tenant list and the health answer are
merged from all nodes (merge.py); creating a tenant lands on its owner.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader

from oxyd.cluster import events, merge
from oxyd.cluster.node import RETRY_AFTER_S, Node
from oxyd.cluster.peers import FROM_HEADER, HOPS_HEADER, SCOPE_HEADER
from oxyd.http.inputs import body_limit_bytes, read_limited
from oxyd.http.replies import ApiError
from oxyd.model import valid_tenant_id

_TENANT_PATH = re.compile(r"^/v1/tenants/([^/]+)(?:/.*)?$")
# RFC 9110 §7.6.1 hop-by-hop fields, plus Host (the peer's own) and Content-Length (aiohttp
# sets it from what it actually sends).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
MAX_HOPS = 2
# Answers up to this size are read whole and sent with one write (most JSON answers); larger
# or unsized ones (media, event streams) are streamed chunk by chunk.
BUFFER_MAX_BYTES = 1 << 20
CHUNK_BYTES = 1 << 16


def middleware(node: Node):
    @web.middleware
    async def cluster(request: web.Request, handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/v1/cluster/"):
            # Node-to-node routes check the cluster token themselves (routes.py), not a user's
            # bearer token: they skip the auth middleware by calling the route directly.
            return await request.match_info.handler(request)
        m = _TENANT_PATH.match(path)
        if m is not None:
            return await route_tenant(node, request, handler, m.group(1))
        if request.headers.get(SCOPE_HEADER) == "node" or request.method == "OPTIONS":
            return await handler(request)
        if path == "/v1/tenants":
            if request.method == "GET":
                return await merge.tenants(node, request, handler)
            if request.method == "POST":
                return await route_create(node, request, handler)
        if path == "/v1/events" and request.method == "GET":
            return await events.events(node, request)
        if path == "/v1/health" and request.method == "GET":
            return await merge.health(node, request, handler)
        return await handler(request)

    return cluster


def _hops(request: web.Request) -> int:
    try:
        return max(0, int(request.headers.get(HOPS_HEADER, "0")))
    except ValueError:
        return 0


def _from_node(request: web.Request) -> set[int]:
    raw = request.headers.get(FROM_HEADER, "")
    return {int(raw)} if raw.isdigit() else set()


def moving_error(tenant_id: str) -> ApiError:
    return ApiError(
        503,
        "tenant_moving",
        f"tenant {tenant_id!r} is moving to another node; retry shortly",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def unavailable_error(node: int, why: str) -> ApiError:
    return ApiError(
        503,
        "node_unavailable",
        f"node {node}, which holds this tenant, does not answer ({why})",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


async def route_tenant(node: Node, request: web.Request, handler, tenant_id: str):
    if not valid_tenant_id(tenant_id) or node.holds(tenant_id):
        return await handler(request)
    if tenant_id in node.moving or tenant_id in node.importing:
        raise moving_error(tenant_id)
    hops = _hops(request)
    owner = node.owner(tenant_id)
    if owner != node.me and hops == 0:
        # Small bodies are read first, so the request can go elsewhere if the owner is down.
        body = None
        size = request.content_length
        if request.body_exists and size is not None and size <= BUFFER_MAX_BYTES:
            body = await request.read()
        try:
            return await forward(node, request, owner, hops + 1, body=body)
        except ApiError as e:
            if e.code != "node_unavailable" or (request.body_exists and body is None):
                raise
            # The owner is down. Before a resize completes, the tenant may still run on the
            # node that had it (a streamed body is never sent twice: those get the 503).
            holder, _ = await node.locate(tenant_id, skip={owner})
            if holder is None:
                raise
            return await forward(node, request, holder, MAX_HOPS, body=body)
    if hops >= MAX_HOPS:
        return await handler(request)
    # The owner does not hold it (or a resize is under way): who does?
    holder, outcome = await node.locate(tenant_id, skip=_from_node(request) | {owner})
    if holder is not None:
        return await forward(node, request, holder, hops + 1)
    if outcome == "moving":
        raise moving_error(tenant_id)
    if outcome == "unavailable" and request.method != "PUT":
        raise ApiError(
            503,
            "node_unavailable",
            f"tenant {tenant_id!r} is not here and a node that may hold it does not answer",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    return await handler(request)  # nobody has it: this node answers (404, or an import)


async def route_create(node: Node, request: web.Request, handler):
    """POST /v1/tenants lands on the new tenant's owner, which checks no node has it."""
    raw = await read_limited(request, body_limit_bytes(request))
    try:
        tid = json.loads(raw).get("id")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        tid = None
    if not valid_tenant_id(tid):
        return await handler(_with_body(request, raw))  # the route explains what is wrong
    owner = node.owner(tid)
    if owner != node.me and _hops(request) == 0:
        return await forward(node, request, owner, 1, body=raw)
    if not node.holds(tid):
        holder, outcome = await node.locate(tid, skip=_from_node(request))
        if holder is not None or outcome == "moving":
            raise ApiError(409, "tenant_exists", f"tenant {tid!r} exists already")
    return await handler(_with_body(request, raw))


def _with_body(request: web.Request, raw: bytes) -> web.Request:
    # The body was read to find the id; the route reads it again from a fresh stream.
    reader = StreamReader(request.protocol, 2**16, loop=asyncio.get_running_loop())
    reader.feed_data(raw)
    reader.feed_eof()
    clone = request.clone()
    clone._payload = reader  # aiohttp has no public way to replace a request's body
    return clone


async def forward(
    node: Node, request: web.Request, target: int, hops: int, body: bytes | None = None
) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    headers[HOPS_HEADER] = str(hops)
    headers[FROM_HEADER] = str(node.me)
    if request.remote:
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {request.remote}" if prior else request.remote
    if body is not None:
        data = body
    elif request.body_exists:
        data = request.content.iter_chunked(CHUNK_BYTES)
    else:
        data = None
    url = node.peers.url(target, request.rel_url.raw_path_qs)
    try:
        upstream = await node.peers.session.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        )
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        raise unavailable_error(target, type(e).__name__) from None
    async with upstream:
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        size = upstream.content_length
        if size is not None and size <= BUFFER_MAX_BYTES and request.method != "HEAD":
            try:
                payload = await upstream.read()
            except aiohttp.ClientError as e:
                raise unavailable_error(target, type(e).__name__) from None
            return web.Response(
                status=upstream.status, reason=upstream.reason, body=payload, headers=out_headers
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=out_headers
        )
        if size is not None:
            response.content_length = size
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except aiohttp.ClientError:
            pass  # the owner went away mid-stream: end ours too
        await response.write_eof()
        return response
