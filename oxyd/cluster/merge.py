"""GET /v1/tenants and GET /v1/health across every node: this node's answer plus each
peer's (asked with the caller's own token, for that node alone). A node that does not answer
is listed as unavailable; the others are still shown."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from oxyd.cluster.node import Node
from oxyd.cluster.peers import SCOPE_HEADER, PeerUnavailable
from oxyd.http.replies import ApiError


async def _gather(node: Node, request: web.Request, handler, path: str):
    """{node: (status, body) | PeerUnavailable | ApiError}, this node's included."""
    forwarded = {"Authorization": request.headers.get("Authorization", ""), SCOPE_HEADER: "node"}
    peers_task = asyncio.ensure_future(node.peers.fanout(path, forwarded))
    local: tuple[int, Any] | ApiError
    try:
        # Without Accept-Encoding: the local answer is read here, not sent as it is.
        clone = request.clone(headers={k: v for k, v in forwarded.items() if v})
        resp = await handler(clone)
        local = (resp.status, json.loads(resp.body))
    except ApiError as e:
        local = e
    except BaseException:
        peers_task.cancel()
        raise
    results: dict[int, Any] = {node.me: local}
    results.update(await peers_task)
    return results


def _node_list(results: dict[int, Any]) -> list[dict[str, Any]]:
    out = []
    for n, res in sorted(results.items()):
        if isinstance(res, PeerUnavailable):
            out.append({"node": n, "status": "unavailable", "error": res.why})
        elif isinstance(res, ApiError):
            out.append({"node": n, "status": "error", "error": res.code})
        else:
            out.append({"node": n, "status": "ok" if res[0] == 200 else "error"})
    return out


def _first_error(results: dict[int, Any]) -> ApiError:
    """Every node refused: the caller's problem (401/403), said as this node says it."""
    for res in results.values():
        if isinstance(res, ApiError):
            return res
    for res in results.values():
        if isinstance(res, tuple):
            err = (res[1] or {}).get("error", {}) if isinstance(res[1], dict) else {}
            return ApiError(res[0], err.get("code", "error"), err.get("message", "refused"))
    return ApiError(503, "node_unavailable", "no node answers", {"Retry-After": "5"})


async def tenants(node: Node, request: web.Request, handler) -> web.Response:
    results = await _gather(node, request, handler, "/v1/tenants")
    merged: list[dict[str, Any]] = []
    answered = False
    for n, res in results.items():
        if isinstance(res, tuple) and res[0] == 200 and isinstance(res[1], dict):
            answered = True
            for t in res[1].get("tenants", []):
                t.setdefault("node", n)
                merged.append(t)
    if not answered:
        raise _first_error(results)
    merged.sort(key=lambda t: t["id"])
    return web.json_response({"tenants": merged, "nodes": _node_list(results)})


async def health(node: Node, request: web.Request, handler) -> web.Response:
    results = await _gather(node, request, handler, "/v1/health")
    parts = {
        n: res[1]
        for n, res in results.items()
        if isinstance(res, tuple) and res[0] == 200 and isinstance(res[1], dict)
    }
    if not parts:
        raise _first_error(results)
    out = merge_health(parts)
    for n, res in sorted(results.items()):
        if isinstance(res, PeerUnavailable):
            out["alerts"].append(unavailable_alert(n, res.why))
    out["nodes"] = _node_list(results)
    return web.json_response(out)


def unavailable_alert(n: int, why: str) -> dict[str, Any]:
    return {
        "tenant": None,
        "state": "node_unavailable",
        "node": n,
        "reason": f"node {n} does not answer ({why})",
        "action": "its tenants wait for it: check the pod and its volume",
    }


def merge_health(parts: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One health answer from several nodes' answers ({node: answer})."""
    out: dict[str, Any] = {
        "checked_at_ms": min(p.get("checked_at_ms") or 0 for p in parts.values()),
        "total": 0,
        "healthy": 0,
        "reconnected": 0,
        "failed": 0,
        "by_state": {},
        "alerts": [],
    }
    for n, p in sorted(parts.items()):
        for key in ("total", "healthy", "reconnected", "failed"):
            out[key] += p.get(key) or 0
        for state, count in (p.get("by_state") or {}).items():
            out["by_state"][state] = out["by_state"].get(state, 0) + count
        out["alerts"] += [{**a, "node": n} for a in p.get("alerts") or []]
    return out
