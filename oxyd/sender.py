"""Sending (design §12): a durable queue per tenant, drained in order while connected.

A request is queued in oxyd.sqlite3 before the API answers. One drain task per tenant with
queued messages sends them in order, paced by the tenant's token bucket (pacing, never a
refusal), and only while the tenant is connected. Errors split as everywhere in oxyd:
NotConnected waits for the connection; other engine errors are transient (backoff, at most
`send.max_attempts`); SendRejected is terminal (the message fails with its code). The id
chosen at queue time is reused on every attempt where the engine can, so a resend after a
crash is one message; where it cannot (neonize), see oxyd/send_attempt.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from loguru import logger

from oxyd import send_attempt
from oxyd.engine import NotConnected
from oxyd.model import PARKED, State
from oxyd.outgoing import Outgoing, SendResult, new_wa_id, summary_text
from oxyd.store import outbox, sendqueue
from oxyd.store.sendqueue import CANCELLED, FAILED, QUEUED, SENT, Row

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from oxyd.model import Message
    from oxyd.supervision.runner import Runner
    from oxyd.supervision.supervisor import Supervisor

BATCH = 50
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
DONE_TTL_MS = 7 * 24 * 3600 * 1000
PRUNE_EVERY_S = 3600.0


def request_hash(method: str, path: str, body: Any) -> str:
    """Identifies "the same request" for Idempotency-Key: route and body, key order aside."""
    canon = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


class SendError(Exception):
    """A send request that cannot be done; `code`/`status` are the API's."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class Sender:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.cfg = sup.cfg.send
        self.running = False
        self._tasks: dict[str, asyncio.Task] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._waiters: dict[tuple[str, str], set[asyncio.Future]] = {}
        self._cancelled: set[tuple[str, str]] = set()
        self._sweeper: asyncio.Task | None = None
        self.in_flight: dict[str, str] = {}
        self.depth: Counter[str] = Counter()
        self.sent = 0
        self.failed = 0
        self.tx = sendqueue.GroupTx(sup.store)
        # (tenant, message, media bytes) -> the message to write: keeps a copy of sent media
        # (oxyd/media/kept.py, set by the app); never raises.
        self.keep_media: Callable[[str, Message, bytes | None], Awaitable[Message]] | None = None

    # ---- lifecycle ----

    async def start(self) -> None:
        self.running = True
        self.depth = Counter(await sendqueue.depths(self.sup.store))
        for tid in await sendqueue.tenants_with_queued(self.sup.store):
            self.wake(tid)
        self._sweeper = asyncio.create_task(self._sweep(), name="oxyd-send-sweeper")

    async def stop(self) -> None:
        self.running = False
        # Sends in flight get the grace period to end with their real outcome (no drain
        # starts another one now); one cut short keeps its in-flight mark for the next start.
        sending = [t for tid, t in self._tasks.items() if tid in self.in_flight]
        if sending:
            await asyncio.wait(sending, timeout=self.sup.cfg.supervisor.stop_grace_s)
        tasks = [t for t in (*self._tasks.values(), self._sweeper) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def wake(self, tid: str) -> None:
        self._wake.setdefault(tid, asyncio.Event()).set()
        task = self._tasks.get(tid)
        if self.running and (task is None or task.done()):
            self._tasks[tid] = asyncio.create_task(self._drain(tid), name=f"send-{tid}")

    def state_changed(self, tid: str) -> None:
        """Supervisor hook on every tenant state change: a connect resumes the drain (or
        starts one: rows may have arrived without a request, e.g. a tenant moved in)."""
        ev = self._wake.get(tid)
        if ev is not None:
            ev.set()
        r = self.sup.runners.get(tid)
        if r is not None and r.t.state is State.CONNECTED and tid not in self._tasks:
            self.wake(tid)

    async def forget(self, tid: str) -> None:
        """The tenant is being removed: its queued messages fail."""
        task = self._tasks.pop(tid, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._wake.pop(tid, None)
        now = self.sup.clock.now_ms()
        for row in await sendqueue.expired(self.sup.store, tid, now + 1):
            await self._finish(tid, row, FAILED, error="tenant_removed: the tenant was removed")

    # ---- requests ----

    async def enqueue(
        self, tid: str, out: Outgoing, idempotency: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        try:
            status, answer, replayed = await sendqueue.enqueue(
                self.tx, tid, out, self.sup.clock.now_ms(), self.cfg.queue_max, idempotency
            )
        except sendqueue.IdempotencyConflict:
            raise SendError(
                "idempotency_conflict",
                "this Idempotency-Key was used with another request",
            ) from None
        except sendqueue.QueueFull:
            raise SendError(
                "queue_full",
                f"{self.cfg.queue_max} messages are queued for this tenant; retry later",
                429,
            ) from None
        if not replayed:
            self.depth[tid] += 1
            self.wake(tid)
        return status, answer

    async def status(self, tid: str, msg_id: str) -> dict[str, Any] | None:
        """The message object with its sending status: queue row first (queued, failed,
        cancelled, revoked), then the stored message (sent -> delivered -> read/played)."""
        store = self.sup.store
        row = await sendqueue.get(store, tid, msg_id)
        if row is None:
            return await store.message_by_wa_id(tid, msg_id)
        out = {
            **row.json(),
            "sender": self._own(tid),
            "from_me": True,
            "text": summary_text(row.kind, row.body),
            "delivered_at_ms": None,
            "read_at_ms": None,
            "played_at_ms": None,
        }
        stored = await store.message_by_wa_id(tid, row.wa_id) if row.wa_id else None
        if stored is not None:
            for k in ("sender", "delivered_at_ms", "read_at_ms", "played_at_ms", "media"):
                out[k] = stored.get(k)
            if row.status == SENT:
                out["status"] = stored["status"]
        return out

    async def wait(self, tid: str, msg_id: str, timeout_s: float) -> None:
        """Returns when the message left `queued` (sent, failed, cancelled) or on timeout."""
        row = await sendqueue.get(self.sup.store, tid, msg_id)
        if row is None or row.status != QUEUED:
            return
        fut = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault((tid, msg_id), set())
        waiters.add(fut)
        try:
            await self.sup.bounded(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            waiters.discard(fut)
            if not waiters:
                self._waiters.pop((tid, msg_id), None)

    async def cancel(self, tid: str, msg_id: str) -> tuple[int, dict[str, Any]]:
        """A queued message is cancelled (200); a sent one is revoked for everyone (202, the
        revoke is queued like any message)."""
        row = await sendqueue.get(self.sup.store, tid, msg_id)
        if row is None:
            raise SendError("message_not_found", f"no sent or queued message {msg_id!r}", 404)
        if row.status == QUEUED:
            if self.in_flight.get(tid) == row.id:
                raise SendError("send_in_progress", "the message is being sent; retry shortly")
            self._cancelled.add((tid, row.id))
            # An attempt left in flight by an ended process may have been sent: say so.
            unknown = row.started_at_ms is not None
            why = f"{send_attempt.UNKNOWN}: cancelled after an attempt whose outcome is unknown"
            if await self._finish(
                tid, row, CANCELLED, only_if_queued=True, error=why if unknown else None
            ):
                return 200, {**row.json(), "status": CANCELLED, "error": why if unknown else None}
            row = await sendqueue.get(self.sup.store, tid, msg_id) or row
        if row.status == SENT and row.kind not in ("revoke", "reaction"):
            ref = {"id": row.wa_id or row.id, "sender": self._own(tid), "from_me": True}
            out = Outgoing(new_wa_id(), row.chat, "revoke", {"ref": ref})
            return await self.enqueue(tid, out, None)
        raise SendError("not_cancellable", f"the message is {row.status}: nothing to cancel")

    async def ref(self, tid: str, msg_id: str) -> dict[str, Any]:
        """The message a reaction or edit refers to: {"id", "chat", "sender", "from_me",
        "kind", "status"}."""
        row = await sendqueue.get(self.sup.store, tid, msg_id)
        if row is not None:
            return {
                "id": row.wa_id or row.id,
                "chat": row.chat,
                "sender": self._own(tid),
                "from_me": True,
                "kind": row.kind,
                "status": row.status,
            }
        stored = await self.sup.store.message_by_wa_id(tid, msg_id)
        if stored is None:
            raise SendError("message_not_found", f"no message {msg_id!r}", 404)
        return {k: stored[k] for k in ("id", "chat", "sender", "from_me", "kind", "status")}

    async def mark_read(self, tid: str, chat: str, up_to: str | None) -> dict[str, Any]:
        r = self._connected(tid)
        targets = await sendqueue.read_targets(self.sup.store, tid, chat, up_to)
        if up_to is not None and not targets:
            raise SendError("message_not_found", f"no received message {up_to!r} in {chat}", 404)
        by_sender: dict[str, list[str]] = {}
        for wa_id, sender in targets:
            by_sender.setdefault(sender, []).append(wa_id)
        group = chat.endswith("@g.us")
        try:
            for sender, ids in by_sender.items():
                await r.client.mark_read(chat, ids, sender if group else None)
        except NotConnected as e:
            raise SendError("not_connected", str(e) or "tenant is not connected") from e
        await sendqueue.clear_unread(self.sup.store, tid, chat)
        return {"chat": chat, "marked": len(targets)}

    async def presence(self, tid: str, chat: str, state: str) -> dict[str, Any]:
        r = self._connected(tid)
        try:
            await r.client.chat_presence(chat, state)
        except NotConnected as e:
            raise SendError("not_connected", str(e) or "tenant is not connected") from e
        return {"chat": chat, "state": state}

    def _connected(self, tid: str) -> Runner:
        r = self.sup.runners[tid]
        if r.t.state is not State.CONNECTED:
            raise SendError("not_connected", f"tenant is {r.t.state}, not connected")
        return r

    def _own(self, tid: str) -> str:
        r = self.sup.runners.get(tid)
        return (r.t.jid if r is not None else None) or ""

    # ---- the drain task ----

    async def _drain(self, tid: str) -> None:
        ev = self._wake.setdefault(tid, asyncio.Event())
        try:
            while self.running:
                r = self.sup.runners.get(tid)
                if r is None:
                    return
                if r.t.state is not State.CONNECTED:
                    ev.clear()
                    await ev.wait()  # a state change or a new message
                    continue
                ev.clear()
                batch = await sendqueue.next_queued(self.sup.store, tid, BATCH)
                if not batch:
                    if ev.is_set():
                        continue
                    return
                for row, data in batch:
                    if not await self._send_one(r, row, data):
                        break
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: log it, and the next wake starts a fresh task
            logger.bind(tenant=tid).opt(exception=e).error("send queue task failed: {}", e)
        finally:
            if self._tasks.get(tid) is asyncio.current_task():
                del self._tasks[tid]

    async def _send_one(self, r: Runner, row: Row, data: bytes | None) -> bool:
        return await send_attempt.send_one(self, r, row, data)

    async def _finish(
        self,
        tid: str,
        row: Row,
        status: str,
        *,
        result: SendResult | None = None,
        error: str | None = None,
        only_if_queued: bool = False,
    ) -> bool:
        now_ms = self.sup.clock.now_ms()
        data = {
            **row.json(),
            "status": status,
            "error": error,
            "sent_at_ms": result.sent_at_ms if result else None,
        }
        if result is not None and result.wa_id != row.id:
            data["wa_id"] = result.wa_id
        rows = outbox.rows(self.sup.subs, tid, "message.status", data, now_ms)
        ref = row.body.get("ref") or {}
        done = await sendqueue.finish(
            self.tx,
            tid,
            row.id,
            status,
            now_ms,
            rows,
            wa_id=result.wa_id if result else None,
            sent_at_ms=result.sent_at_ms if result else None,
            error=error,
            only_if_queued=only_if_queued,
            revokes=ref.get("id") if row.kind == "revoke" and status == SENT else None,
        )
        if not done:
            return False
        if rows:
            self.sup.kick()
        self.depth[tid] -= 1
        if self.depth[tid] <= 0:
            del self.depth[tid]
        if status == SENT:
            self.sent += 1
        elif status == FAILED:
            self.failed += 1
            logger.bind(tenant=tid).warning("message {} failed: {}", row.id, error)
        for fut in self._waiters.get((tid, row.id), ()):
            if not fut.done():
                fut.set_result(None)
        self.sup.publish({"type": "message", "tenant": tid, "data": data})
        return True

    # ---- parked tenants, old rows ----

    async def _sweep(self) -> None:
        interval_s = min(60.0, max(0.05, self.cfg.queue_max_age_s / 4))
        since_prune_s = PRUNE_EVERY_S
        while True:
            try:
                if since_prune_s >= PRUNE_EVERY_S:
                    since_prune_s = 0.0
                    now = self.sup.clock.now_ms()
                    await sendqueue.prune(
                        self.sup.store, now - IDEMPOTENCY_TTL_MS, now - DONE_TTL_MS
                    )
                await self._fail_parked()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.opt(exception=e).error("send queue sweep failed: {}", e)
            await self.sup.clock.sleep(interval_s)
            since_prune_s += interval_s

    async def _fail_parked(self) -> None:
        before_ms = self.sup.clock.now_ms() - int(self.cfg.queue_max_age_s * 1000)
        for tid, r in list(self.sup.runners.items()):
            if r.t.state not in PARKED or not self.depth.get(tid):
                continue
            for row in await sendqueue.expired(self.sup.store, tid, before_ms):
                why = (
                    f"tenant_parked: the tenant is {r.t.state} and the message waited longer"
                    f" than send.queue_max_age_s ({self.cfg.queue_max_age_s:g}s)"
                )
                await self._finish(tid, row, FAILED, error=why, only_if_queued=True)
