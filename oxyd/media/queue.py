"""The downloader's in-memory view of pending media rows: fair, bounded, ordered.

One deque per tenant, served round-robin (one job per tenant per turn), filled from the
`media` table a page at a time per tenant (memory stays bounded with any backlog); retries
wait in a heap by due time; a job whose file (same tenant, same WhatsApp hash) is downloading
waits for that download and then finds the file already there.
"""

from __future__ import annotations

import heapq
from collections import deque

from oxyd.store.media import Job

PAGE = 200  # rows loaded per tenant at a time
LOW_WATER = PAGE // 4  # a tenant's next page is loaded below this many queued


class FairQueue:
    def __init__(self) -> None:
        self._queues: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()
        self._more: set[str] = set()  # tenants that may have rows not loaded yet
        self._cursor: dict[str, int] = {}  # last row id loaded per tenant
        self._known: set[int] = set()  # queued, delayed or running
        self._delayed: list[tuple[int, int, Job]] = []
        self._busy: dict[tuple[str, str], list[Job]] = {}
        self.page_due = False  # a tenant ran dry while it may have more rows in the table

    # ---- filling ----

    def may_have_more(self, tenants: list[str]) -> None:
        self._more.update(tenants)

    def rewind(self, tenant: str) -> None:
        """Rows of `tenant` went back to pending behind the cursor (lost files): read its
        pending rows from the start again (the ones already known are skipped)."""
        self._cursor.pop(tenant, None)
        self._more.add(tenant)

    def to_refill(self) -> list[tuple[str, int]]:
        """(tenant, cursor) of tenants whose next page should be loaded now."""
        self.page_due = False
        return [
            (t, self._cursor.get(t, 0))
            for t in list(self._more)
            if len(self._queues.get(t, ())) < LOW_WATER
        ]

    def loaded(self, tenant: str, jobs: list[Job], now_ms: int) -> None:
        if len(jobs) < PAGE:
            self._more.discard(tenant)
        if jobs:
            self._cursor[tenant] = jobs[-1].id
        for job in jobs:
            if job.id in self._known:
                continue
            if job.next_attempt_ms > now_ms:
                self.delay(job, job.next_attempt_ms)
            else:
                self.enqueue(job)

    def enqueue(self, job: Job, *, front: bool = False) -> None:
        self._known.add(job.id)
        q = self._queues.get(job.tenant)
        if q is None:
            q = self._queues[job.tenant] = deque()
        if not q:
            self._ready.append(job.tenant)
        q.appendleft(job) if front else q.append(job)

    def delay(self, job: Job, due_ms: int) -> None:
        self._known.add(job.id)
        heapq.heappush(self._delayed, (due_ms, job.id, job))

    def release_due(self, now_ms: int) -> None:
        while self._delayed and self._delayed[0][0] <= now_ms:
            _, _, job = heapq.heappop(self._delayed)
            self.enqueue(job)

    @property
    def next_due_ms(self) -> int | None:
        return self._delayed[0][0] if self._delayed else None

    # ---- taking ----

    def next(self) -> Job | None:
        """Round-robin over tenants with queued jobs: one job per tenant per turn."""
        while self._ready:
            tenant = self._ready.popleft()
            q = self._queues.get(tenant)
            if not q:
                continue
            job = q.popleft()
            if q:
                self._ready.append(tenant)
            else:
                del self._queues[tenant]
                if tenant in self._more:
                    self.page_due = True
            sha = job.expected_sha256
            if sha and (job.tenant, sha) in self._busy:
                self._busy[(job.tenant, sha)].append(job)  # reuse that download's file
                continue
            if sha:
                self._busy[(job.tenant, sha)] = []
            return job
        return None

    def finished(self, job: Job) -> None:
        """A job's run ended (whatever the outcome): jobs waiting for its file go next."""
        if job.expected_sha256:
            for waiter in self._busy.pop((job.tenant, job.expected_sha256), []):
                self.enqueue(waiter, front=True)

    def forget(self, job_id: int) -> None:
        self._known.discard(job_id)

    def knows(self, job_id: int) -> bool:
        return job_id in self._known

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self._queues.values()) + len(self._delayed)
