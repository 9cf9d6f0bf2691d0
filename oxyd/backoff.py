"""Reconnect pacing: exponential backoff with jitter, and the in-flight connect limiter."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

JITTER = 0.2  # a delay is drawn from [d * (1 - JITTER), d]: spread out, never above the cap


def delay_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Wait before attempt number `attempt + 1` (attempt 0 = after the first failure)."""
    d = min(cap_s, base_s * 2 ** min(attempt, 62))
    r = (rng or random).random()
    return d * (1 - JITTER * r)


class ConnectGate:
    """At most `limit` connects in flight at once, so a restart or a mass drop does not turn
    into a storm that gets numbers banned. Counts the peak for metrics and benchmarks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = asyncio.Semaphore(limit)
        self.in_flight = 0
        self.peak = 0
        self.total = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._sem:
            self.in_flight += 1
            self.total += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
