"""Node-to-node HTTP: one pooled aiohttp client session for proxying, merges and moves."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import aiohttp

from oxyd.cluster import ring

TOKEN_HEADER = "X-Oxyd-Cluster-Token"
HOPS_HEADER = "X-Oxyd-Hops"  # how many nodes forwarded this request already
SCOPE_HEADER = "X-Oxyd-Scope"  # "node": answer for this node alone (merges ask each node)
FROM_HEADER = "X-Oxyd-From-Node"


class PeerUnavailable(Exception):
    def __init__(self, node: int, why: str) -> None:
        super().__init__(f"node {node} does not answer ({why})")
        self.node, self.why = node, why


class Peers:
    def __init__(self, template: str, me: int, nodes: int, token: str, timeout_s: float):
        self.template, self.me, self.nodes = template, me, nodes
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Bytes pass through as the owner sent them (gzip stays gzip for the caller).
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=128),
                # No read timeout: event streams and ?wait= long polls stay open; a node that
                # does not accept the connection at all counts as down.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout_s, sock_connect=self.timeout_s
                ),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, node: int, path: str = "") -> str:
        return ring.peer_url(self.template, node) + path

    def others(self) -> list[int]:
        return [n for n in range(self.nodes) if n != self.me]

    def token_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.token.encode())

    def internal_headers(self) -> dict[str, str]:
        return {TOKEN_HEADER: self.token, FROM_HEADER: str(self.me)}

    async def get_json(
        self, node: int, path: str, headers: dict[str, str], timeout_s: float | None = None
    ) -> tuple[int, Any]:
        """(status, parsed body) or PeerUnavailable."""
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s * 2)
        try:
            async with self.session.get(
                self.url(node, path),
                headers={**headers, "Accept-Encoding": "identity"},
                timeout=timeout,
            ) as resp:
                body = await resp.json(content_type=None)
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise PeerUnavailable(node, type(e).__name__ + (f": {e}" if str(e) else "")) from e

    async def fanout(
        self, path: str, headers: dict[str, str], nodes: list[int] | None = None
    ) -> dict[int, tuple[int, Any] | PeerUnavailable]:
        targets = self.others() if nodes is None else nodes
        results = await asyncio.gather(
            *(self.get_json(n, path, headers) for n in targets), return_exceptions=True
        )
        out: dict[int, tuple[int, Any] | PeerUnavailable] = {}
        for n, res in zip(targets, results, strict=True):
            if isinstance(res, BaseException) and not isinstance(res, PeerUnavailable):
                res = PeerUnavailable(n, repr(res))
            out[n] = res
        return out
