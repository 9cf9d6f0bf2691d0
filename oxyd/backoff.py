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


class Slot:
    """One connect in flight, held from the dial until the attempt ends or `release()` gives
    it back early (a connect that must wait for something else than its handshake)."""

    def __init__(self, gate: ConnectGate) -> None:
        self._gate = gate
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._gate._give_back()


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
    async def slot(self) -> AsyncIterator[Slot]:
        await self._sem.acquire()
        self.in_flight += 1
        self.total += 1
        self.peak = max(self.peak, self.in_flight)
        held = Slot(self)
        try:
            yield held
        finally:
            held.release()

    def _give_back(self) -> None:
        self.in_flight -= 1
        self._sem.release()
