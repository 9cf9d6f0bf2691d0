"""GET /v1/events across the cluster: one Server-Sent Events stream fed by every node's.

Each node's stream (asked for that node alone, with the caller's token) begins with a
snapshot; the caller gets one merged snapshot (tenants of every node, health summed, the
nodes that did not answer listed), then every node's events as they come, frame by frame.
When one node's stream ends (it stopped, or was moved off), the merged stream ends too, and
the client reconnects for a fresh snapshot, as the status page does after any drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
from aiohttp import web

from oxyd.cluster.merge import merge_health, unavailable_alert
from oxyd.cluster.node import RETRY_AFTER_S, Node
from oxyd.cluster.peers import SCOPE_HEADER
from oxyd.http.replies import ApiError

FRAME_END = b"\n\n"
FRAME_MAX_BYTES = 1 << 22  # a snapshot of a few thousand tenants fits well within


async def _open(node: Node, n: int, headers: dict[str, str]):
    try:
        resp = await node.peers.session.get(node.peers.url(n, "/v1/events"), headers=headers)
    except (aiohttp.ClientError, TimeoutError) as e:
        return n, type(e).__name__
    if resp.status != 200:
        resp.release()
        return n, resp.status
    return n, resp


class Frames:
    """Whole SSE frames from a node's stream (a frame may arrive in many reads)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buf = b""

    async def next(self) -> bytes:
        while True:
            i = self.buf.find(FRAME_END)
            if i >= 0:
                frame, self.buf = self.buf[: i + 2], self.buf[i + 2 :]
                return frame
            if len(self.buf) > FRAME_MAX_BYTES:
                raise ValueError("an event frame exceeds FRAME_MAX_BYTES")
            chunk = await self.resp.content.readany()
            if not chunk:
                raise ConnectionResetError("the node's stream ended")
            self.buf += chunk


def _parse(frame: bytes) -> tuple[str, Any]:
    event, data = "message", None
    for line in frame.decode().splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
    return event, data


async def events(node: Node, request: web.Request) -> web.StreamResponse:
    headers = {
        "Authorization": request.headers.get("Authorization", ""),
        SCOPE_HEADER: "node",
        "Accept-Encoding": "identity",
    }
    opened = await asyncio.gather(*(_open(node, n, headers) for n in range(node.nodes)))
    streams = {n: r for n, r in opened if isinstance(r, aiohttp.ClientResponse)}
    failed = {n: r for n, r in opened if not isinstance(r, aiohttp.ClientResponse)}
    try:
        if not streams:
            if any(r in (401, 403) for r in failed.values()):
                raise ApiError(401, "unauthorized", "invalid token")
            raise ApiError(
                503, "node_unavailable", "no node answers", {"Retry-After": str(RETRY_AFTER_S)}
            )
        snapshots = {}
        frames = {n: Frames(r) for n, r in streams.items()}
        for n in list(streams):
            try:
                event, data = _parse(await frames[n].next())
            except (aiohttp.ClientError, ConnectionError, ValueError) as e:
                failed[n] = type(e).__name__
                streams.pop(n).release()
                continue
            if event == "snapshot" and isinstance(data, dict):
                snapshots[n] = data
        out = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                "X-Content-Type-Options": "nosniff",
            }
        )
        await out.prepare(request)
        await out.write(_merged_snapshot(snapshots, failed))
        await _pump([frames[n] for n in streams], out)
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out
    finally:
        for resp in streams.values():
            resp.release()


def _merged_snapshot(snapshots: dict[int, dict[str, Any]], failed: dict[int, Any]) -> bytes:
    tenants = []
    for n, snap in snapshots.items():
        tenants += [{**t, "node": t.get("node", n)} for t in snap.get("tenants") or []]
    tenants.sort(key=lambda t: t["id"])
    healths = {n: s["health"] for n, s in snapshots.items() if s.get("health")}
    health = merge_health(healths) if healths else None
    if health is not None:
        health["alerts"] += [unavailable_alert(n, str(why)) for n, why in failed.items()]
    data = {
        "tenants": tenants,
        "health": health,
        "admin": any(s.get("admin") for s in snapshots.values()),
        "nodes": [
            {"node": n, "status": "ok" if n in snapshots else "unavailable"}
            for n in sorted(set(snapshots) | set(failed))
        ],
    }
    return f"event: snapshot\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _pump(sources: list[Frames], out: web.StreamResponse) -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(1000)

    async def read(source: Frames) -> None:
        try:
            while True:
                await queue.put(await source.next())
        except (aiohttp.ClientError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            await queue.put(None)

    readers = [asyncio.create_task(read(f)) for f in sources]
    try:
        while (frame := await queue.get()) is not None:
            await out.write(frame)
    except ConnectionError:
        pass  # the client left
    finally:
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
