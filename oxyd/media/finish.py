"""Finishing a download off the transfers' path: the file put in place, the row written.

- `Flusher`: `files.commit` (the fsync of media.fsync, then the rename) runs on a few threads
  of its own. An fsync can take long on a busy disk; on the default executor it would hold up
  whatever is queued behind it there: the transfers' own disk writes, and aiohttp's file
  opens when media is served. The downloader starts no new transfer while every flush thread
  is taken (backpressure: downloads never run ahead of the disk by more than that).
- `Finisher`: outcomes are group-committed; those arriving while a transaction runs go in the
  next one (a write transaction per file was most of a small file's cost).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from oxyd.clock import Clock
from oxyd.store.media import MediaTable, Outcome

T = TypeVar("T")


class Flusher:
    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.busy = 0  # flushes queued or running
        self._pool: ThreadPoolExecutor | None = None

    @property
    def full(self) -> bool:
        return self.busy >= self.threads

    async def run(self, fn: Callable[..., T], *args) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="oxyd-media-flush")
        self.busy += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args))
        finally:
            self.busy -= 1

    def close(self) -> None:
        """A flush still running ends on its own (a thread cannot be stopped): its file is in
        place or not, and the next start finds either (dedup on disk, or a partial deleted)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class Finisher:
    def __init__(self, table: MediaTable, clock: Clock) -> None:
        self.table = table
        self.clock = clock
        self._pending: list[tuple[Outcome, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def finish(self, outcome: Outcome) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="oxyd-media-done")
        await asyncio.shield(fut)

    async def drain(self) -> None:
        """At stop: outcomes already decided are still written."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.table.finish_many([o for o, _ in batch], self.clock.now_ms())
            except Exception as e:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
