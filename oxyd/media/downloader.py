"""Background downloads of incoming media: durable, fair between tenants, bounded.

The queue lives in the `media` table (rows are added by the writer in the same transaction as
their message, so a restart resumes every pending download). In memory: one deque per tenant,
served round-robin, so one tenant's 500 videos do not starve the others; at most
`media.concurrency` downloads run at once. A CDN copy that is gone (403/404/410) triggers one
re-upload request to the phone, then a second download; only then does the row fail.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from oxyd.clock import Clock
from oxyd.config import MediaConfig
from oxyd.engine import Client, EngineError, NotConnected
from oxyd.media import files, recovery
from oxyd.media.finish import Finisher, Flusher
from oxyd.media.queue import PAGE, FairQueue
from oxyd.media.quota import QuotaAlerts
from oxyd.store.media import FAILED, KEPT_REF, PENDING, SKIPPED, STORED, Job, MediaTable, Outcome

MIB = 1 << 20
OFFLINE_RETRY_S = 30.0  # a tenant that is not connected: look again later, no attempt spent

# client_of(tenant) -> (client, connected) or None when the tenant is gone.
ClientOf = Callable[[str], "tuple[Client, bool] | None"]


class Downloads:
    def __init__(
        self,
        cfg: MediaConfig,
        data_dir: Path,
        table: MediaTable,
        clock: Clock,
        client_of: ClientOf,
    ) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self.table = table
        self.clock = clock
        self.client_of = client_of
        self.kick: Callable[[], None] = lambda: None  # wakes the webhook dispatcher
        self.results: Counter[str] = Counter()
        self.bytes_by_tenant: Counter[str] = Counter()
        # (tenant, sha256) whose file is being put in place or reused and whose row does not
        # say stored yet: retention leaves these alone (see oxyd/media/retention.py).
        self.committing: Counter[tuple[str, str]] = Counter()
        self.fresh: dict[tuple[str, str], float] = {}  # sent files kept (oxyd/media/kept.py)
        self._queue = FairQueue()
        self._in_flight = 0
        self._slots: set[int] = set()  # jobs holding a transfer slot
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._dirty = True
        self.quota = QuotaAlerts(table, clock)
        self._loop_task: asyncio.Task | None = None
        self._partial_dirs: set[str] = set()
        self.flusher = Flusher(cfg.concurrency)  # fsync + rename, on threads of their own
        self._finisher = Finisher(table, clock)

    # ---- lifecycle ----

    async def start(self) -> None:
        left, unreadable = await asyncio.to_thread(files.clear_partials, self.data_dir)
        if left:
            logger.info("media: removed {} partial download(s) of an interrupted run", left)
        for tenant in unreadable:
            logger.bind(tenant=tenant).error("media folder unreadable; its downloads will fail")
        self.bytes_by_tenant = Counter(await self.table.bytes_by_tenant())
        await self.quota.load(self.bytes_by_tenant, self._quota_bytes())
        self._loop_task = asyncio.create_task(self._loop(), name="oxyd-media")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._finisher.drain()  # outcomes already decided are still written
        self.flusher.close()
        self._loop_task = None

    def wake(self) -> None:
        """New pending rows were committed (writer) or re-queued."""
        self._dirty = True
        self._wake.set()

    @property
    def queue_depth(self) -> int:
        return self._queue.depth

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---- scheduling ----

    async def _loop(self) -> None:
        await self._recover()
        q = self._queue
        while True:
            # Cleared before the work, not after: a wake() during an await below must not be
            # lost (it leaves the event set, so the wait returns at once).
            self._wake.clear()
            if self._dirty:
                self._dirty = False
                q.may_have_more(await self.table.pending_tenants())
            for tenant, cursor in q.to_refill():
                jobs = await self.table.pending(tenant, cursor, PAGE)
                q.loaded(tenant, jobs, self.clock.now_ms())
            q.release_due(self.clock.now_ms())
            # Transfers are bounded by media.concurrency, and wait while every flush thread
            # is taken (the disk is behind: no use downloading faster than it stores).
            while (
                self._in_flight < self.cfg.concurrency
                and not self.flusher.full
                and (job := q.next()) is not None
            ):
                self._launch(job)
            if q.page_due:
                self._wake.set()
            await self._wait()

    async def _recover(self) -> None:
        """Before the first download: stored rows whose file is gone go back to pending."""
        try:
            known = self.client_of  # a removed (not purged) tenant's rows stay as they are
            if await recovery.find_lost(self.data_dir, self.table, lambda t: known(t) is not None):
                await self.recount()
                self._dirty = True
        except Exception as e:  # never stops the downloads; serving still finds them one by one
            logger.opt(exception=e).error("media: the check for missing files failed: {}", e)

    async def file_missing(self, tenant: str, sha256: str) -> None:
        """Serving found a stored file missing: its rows go back to pending (see recovery)."""
        if await self.table.mark_lost(tenant, [sha256]):
            logger.bind(tenant=tenant).warning("media {} missing from disk; fetching again", sha256)
            self.bytes_by_tenant[tenant] = (await self.table.bytes_by_tenant(tenant)).get(tenant, 0)
            self._queue.rewind(tenant)
            self.wake()

    async def _wait(self) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        aws: set[asyncio.Future] = {waiter}
        due_ms = self._queue.next_due_ms
        if due_ms is not None and self._in_flight < self.cfg.concurrency:
            due_s = max(0.0, (due_ms - self.clock.now_ms()) / 1000)
            aws.add(asyncio.ensure_future(self.clock.sleep(due_s)))
        try:
            await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for a in aws:
                a.cancel()

    def _launch(self, job: Job) -> None:
        self._in_flight += 1
        self._slots.add(job.id)
        task = asyncio.create_task(self._guarded(job), name=f"oxyd-media-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, job: Job) -> None:
        try:
            await self._run(job)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: keep the row pending, try later
            logger.bind(tenant=job.tenant).opt(exception=e).error(
                "media download of {} crashed; retrying later", job.wa_id
            )
            await self._transient(job, f"internal error: {type(e).__name__}: {e}")
        finally:
            self._free_slot(job)
            self._queue.finished(job)
            self._wake.set()

    def _free_slot(self, job: Job) -> None:
        """media.concurrency bounds transfers: a finished transfer frees its slot before the
        file is flushed, moved and its row written, so the next download starts meanwhile."""
        if job.id in self._slots:
            self._slots.discard(job.id)
            self._in_flight -= 1
            self._wake.set()

    # ---- one download ----

    async def _run(self, job: Job) -> None:
        log = logger.bind(tenant=job.tenant)
        found = self.client_of(job.tenant)
        if found is None:
            self._queue.forget(job.id)  # tenant removed: nothing to do
            return
        client, connected = found
        quota = self._quota_bytes()
        if quota and job.size and self.bytes_by_tenant[job.tenant] + job.size > quota:
            if not await self._already_here(job):
                await self._over_quota(job, quota)
                return
        if await self._dedup(job):
            return
        if job.ref == KEPT_REF or not job.ref:
            # Sent through this API: the kept copy was the only one oxyd had.
            await self._done(job, FAILED, "the copy kept of this sent file is missing from disk")
            return
        if not connected:
            await self._later(job, OFFLINE_RETRY_S, "waiting for the tenant to connect")
            return
        if job.tenant in self._partial_dirs:  # one mkdir per tenant and run, not per file
            partial = files.partial_name(self.data_dir, job.tenant)
        else:
            partial = await asyncio.to_thread(files.new_partial, self.data_dir, job.tenant)
            self._partial_dirs.add(job.tenant)
        kept = False
        try:
            try:
                res = await client.download_media(job.ref or "", str(partial), self.cfg.max_bytes)
            except NotConnected:
                await self._later(job, OFFLINE_RETRY_S, "waiting for the tenant to connect")
                return
            except EngineError as e:
                await self._transient(job, f"download failed: {e}")
                return
            status = res.get("status")
            self._free_slot(job)
            if status == "ok":
                kept = await self._store(job, partial, res["sha256"], int(res["size"]))
            elif status == "expired":
                await self._expired(job, client, str(res.get("error") or "CDN copy expired"))
            elif status == "too_large":
                await self._done(job, SKIPPED, f"over media.max_bytes ({self.cfg.max_bytes})")
            else:
                await self._transient(job, f"engine answered {res!r}")
        finally:
            if not kept:
                await asyncio.to_thread(partial.unlink, True)
        log.trace("media {} -> {}", job.wa_id, status)

    async def _store(self, job: Job, partial: Path, sha256: str, size: int) -> bool:
        """True when the partial file was consumed (moved into place or dropped)."""
        if job.expected_sha256 and sha256 != job.expected_sha256:
            await self._transient(job, "file hash does not match WhatsApp's (corrupt download)")
            return False
        quota = self._quota_bytes()
        room = quota - self.bytes_by_tenant[job.tenant] if quota else None
        final = files.path_of(self.data_dir, job.tenant, sha256)
        key = (job.tenant, sha256)
        self.committing[key] += 1
        try:
            outcome = await self.flusher.run(
                files.commit, partial, final, size, room, self.cfg.fsync
            )
            if outcome == "no_room":
                await self._over_quota(job, quota)
                return False
            await self._done(job, STORED, None, sha256=sha256, size=size)
        finally:
            self._uncommit(key)
        if outcome == "new":
            self.bytes_by_tenant[job.tenant] += size
        return True

    def _uncommit(self, key: tuple[str, str]) -> None:
        self.committing[key] -= 1
        if self.committing[key] <= 0:
            del self.committing[key]

    async def _already_here(self, job: Job) -> bool:
        sha = job.expected_sha256
        return bool(sha) and await self.table.has_stored(job.tenant, sha or "")

    async def _dedup(self, job: Job) -> bool:
        """A file this tenant has already (same WhatsApp hash): no second download. The file
        on disk is the proof: it was verified against its hash when it was put there."""
        sha = job.expected_sha256
        if not sha or not files.SHA256_RE.fullmatch(sha):
            return False
        key = (job.tenant, sha)
        self.committing[key] += 1
        try:
            if not await asyncio.to_thread(files.exists, self.data_dir, job.tenant, sha):
                return False
            self.results["deduplicated"] += 1
            await self._done(job, STORED, None, sha256=sha, size=job.size, count=False)
        finally:
            self._uncommit(key)
        return True

    async def _expired(self, job: Job, client: Client, why: str) -> None:
        self.results["expired"] += 1
        if job.reuploaded:
            await self._done(job, FAILED, f"{why}; still gone after the phone re-uploaded it")
            return
        try:
            async with asyncio.timeout(self.cfg.reupload_timeout_s):
                ref = await client.request_media_reupload(
                    job.ref or "", job.chat, job.sender, job.wa_id, job.from_me
                )
        except TimeoutError:
            wait_s = self.cfg.reupload_timeout_s
            await self._done(job, FAILED, f"{why}; the phone did not re-upload it in {wait_s:g}s")
            return
        except NotConnected:
            await self._later(job, OFFLINE_RETRY_S, f"{why}; re-upload waits for a connection")
            return
        except EngineError as e:
            await self._done(job, FAILED, f"{why}; re-upload request failed: {e}")
            return
        self.results["reuploaded"] += 1
        job.reuploaded, job.ref = True, ref
        await self.table.reschedule(job, next_attempt_ms=0, reason=why, ref=ref)
        self._queue.enqueue(job, front=True)

    async def _transient(self, job: Job, why: str) -> None:
        job.attempts += 1
        self.results["retried"] += 1
        if job.attempts >= self.cfg.max_attempts:
            await self._done(job, FAILED, f"{why} (after {job.attempts} attempts)")
            return
        delay_s = min(self.cfg.retry_cap_s, self.cfg.retry_base_s * 2 ** (job.attempts - 1))
        await self._later(job, delay_s, why)

    async def _later(self, job: Job, delay_s: float, why: str) -> None:
        due_ms = self.clock.now_ms() + int(delay_s * 1000)
        await self.table.reschedule(job, next_attempt_ms=due_ms, reason=why)
        self._queue.delay(job, due_ms)

    async def _over_quota(self, job: Job, quota: int) -> None:
        used = self.bytes_by_tenant[job.tenant]
        await self._done(
            job, SKIPPED, f"media.quota_mb reached ({used // MIB} of {quota // MIB} MiB used)"
        )
        if await self.quota.reached(job.tenant, used, quota):
            self.kick()

    async def _done(
        self,
        job: Job,
        status: str,
        reason: str | None,
        *,
        sha256: str | None = None,
        size: int | None = None,
        count: bool = True,
    ) -> None:
        await self._finisher.finish(Outcome(job, status, reason, sha256, size))
        self._queue.forget(job.id)
        if count:
            self.results[status] += 1
        if status == FAILED:
            logger.bind(tenant=job.tenant).warning("media of {} failed: {}", job.wa_id, reason)
        if status in (STORED, FAILED):
            self.kick()

    def _quota_bytes(self) -> int:
        return int(self.cfg.quota_mb * MIB)

    # ---- operator and retention hooks ----

    async def retry(self, tenant: str, wa_id: str) -> tuple[bool, Job | None]:
        """POST .../messages/{msg_id}/media: a failed or skipped download goes again, with a
        fresh attempt budget; the automatic switches (download, types, history) do not apply
        to a request made by hand, the size bound and the quota do. Returns (queued now, the
        row); (False, None) when the message has no media."""
        job = await self.table.by_wa_id(tenant, wa_id)
        if job is None or job.status not in (FAILED, SKIPPED) or self._queue.knows(job.id):
            return False, job
        if not job.ref or (job.ref == KEPT_REF and not await self._already_here(job)):
            raise EngineError("this media has no download reference: it cannot be fetched")
        if job.size is not None and job.size > self.cfg.max_bytes:
            raise EngineError(f"{job.size} bytes is over media.max_bytes ({self.cfg.max_bytes})")
        await self.table.requeue(job, self.clock.now_ms())
        job.status, job.attempts, job.reuploaded, job.reason = PENDING, 0, False, None
        self._queue.enqueue(job, front=True)
        self._wake.set()
        return True, job

    async def recount(self) -> None:
        """Bytes per tenant again from the table (retention freed space, files were lost): a
        tenant using less than at its quota alert may alert again when it fills up."""
        self.bytes_by_tenant.clear()
        self.bytes_by_tenant.update(await self.table.bytes_by_tenant())
        await self.quota.rearm(self.bytes_by_tenant, self._quota_bytes())
