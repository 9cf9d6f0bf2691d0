"""Time as a seam: the real clock, and a fake one that tests advance by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock Unix time in milliseconds (stored, shown)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (timing, deadlines)."""
        ...

    async def sleep(self, delay_s: float) -> None: ...


class RealClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))


class FakeClock:
    """Time moves only when a test calls `advance()`; sleepers wake in deadline order."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_s = start_ms / 1000
        self._start_mono = 1000.0
        self._mono = self._start_mono
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return round((self._now_s + self._mono - self._start_mono) * 1000)

    def monotonic(self) -> float:
        return self._mono

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def sleep(self, delay_s: float) -> asyncio.Future[None]:
        # A plain function, not a coroutine: the deadline is fixed when sleep() is called, not
        # when a task wrapping it first runs (the test may have advanced time in between).
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(0.0, delay_s), next(self._seq), fut))
        return fut

    async def advance(self, delta_s: float) -> None:
        """Move time forward, waking every sleeper whose deadline passes, in order, and
        letting the woken tasks run before time moves on."""
        target = self._mono + delta_s
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, deadline)
            if not fut.done():
                fut.set_result(None)
                await settle()
        self._mono = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let ready tasks run until the loop has nothing immediate left to do."""
    for _ in range(rounds):
        await asyncio.sleep(0)
