"""Persisting tenant states with their webhook rows; a write that fails for a moment (disk
full) is kept in memory and written once the store takes writes again."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from oxyd.clock import Clock
from oxyd.store import faults, outbox
from oxyd.store.db import Store
from oxyd.supervision.outcome import ACTIONS

if TYPE_CHECKING:
    from oxyd.sender import Sender
    from oxyd.supervision.runner import Runner


class StateRecords:
    """The Supervisor's state writes (a mixin: the members below are the Supervisor's)."""

    store: Store
    subs: outbox.Subscriptions
    clock: Clock
    runners: dict[str, Runner]
    zombies: Counter[str]
    kick: Callable[[], None]
    sending: Sender
    _unsaved: dict[str, list]
    _saver: asyncio.Task | None

    if TYPE_CHECKING:  # the Supervisor's own (a stub here would shadow it)

        def tenant_json(self, r: Runner) -> dict[str, Any]: ...
        def publish(self, event: dict[str, Any]) -> None: ...

    async def persist(self, r: Runner, alert: str | None) -> None:
        t = r.t
        data = self.tenant_json(r)
        # Published before the write: the live feed must follow the in-memory state that
        # snapshots read, in order. Published after it, a slow write let a subscriber get a
        # snapshot that already showed a state and then that state's stale change event.
        self.publish({"type": "state", "tenant": t.id, "data": data})
        rows = outbox.rows(
            self.subs, t.id, "tenant.state", {**data, "reason": t.last_error}, t.state_since_ms
        )
        if alert:
            rows += outbox.rows(
                self.subs,
                t.id,
                alert,
                {
                    **data,
                    "reason": t.last_error,
                    "action": ACTIONS.get(t.state, "the client was rebuilt; watch for repeats"),
                },
                t.state_since_ms,
            )
        try:
            await self.store.save_state(t, rows)
        except Exception as e:
            if not faults.transient(e):
                raise
            # Disk full for a moment: the session is fine and the state is right in memory.
            # Killing the session (or counting a failure) over it would turn a storage hiccup
            # into an outage; the row is written as soon as the store takes writes again.
            self._defer_state(r, rows, e)
        else:
            if rows:
                self.kick()
        self.sending.state_changed(t.id)

    def _defer_state(self, r: Runner, rows: list, e: Exception) -> None:
        if r.t.id not in self._unsaved:
            r.log.warning("state write failed ({}); kept in memory, written once it works", e)
        self._unsaved.setdefault(r.t.id, []).extend(rows)
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_deferred(), name="oxyd-state-saver")

    async def _save_deferred(self) -> None:
        """Write the latest state of every tenant whose state write failed, with backoff,
        until all are written (their webhook rows with them)."""
        delay_s = 0.1
        while self._unsaved:
            await self.clock.sleep(delay_s)
            for tid in list(self._unsaved):
                r = self.runners.get(tid)
                rows = self._unsaved[tid]
                try:
                    if r is not None:
                        await self.store.save_state(r.t, rows)
                except Exception as e:
                    if not faults.transient(e):
                        logger.opt(exception=e).error("deferred state write of {} failed", tid)
                        self._unsaved.pop(tid, None)
                    continue
                self._unsaved.pop(tid, None)
                if rows:
                    self.kick()
                logger.bind(tenant=tid).info("deferred state written")
            delay_s = min(delay_s * 2, 5.0)

    @property
    def unsaved_states(self) -> int:
        """Tenants whose current state is not on disk yet (storage fault)."""
        return len(self._unsaved)

    async def zombie(self, r: Runner, silent_s: float, why: str = "no heartbeat or event") -> None:
        self.zombies[r.t.id] += 1
        r.log.warning("zombie: connected but {} for {:.0f}s; rebuilding", why, silent_s)
        data = {
            **self.tenant_json(r),
            "reason": f"{why} for {silent_s:.0f}s",
            "action": "the client was rebuilt; if it repeats, check the network",
        }
        rows = outbox.rows(self.subs, r.t.id, "alert.zombie", data, self.clock.now_ms())
        try:
            await self.store.append_outbox(rows)
        except Exception as e:
            if not faults.transient(e):
                raise
            self._defer_state(r, rows, e)  # the alert goes out with the next state write
            return
        self.kick()
