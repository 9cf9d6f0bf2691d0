"""The health sweep: counts, and catches what the per-tenant heartbeat cannot (a tenant task
that died, or hangs while its state says it is working)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from loguru import logger

from oxyd.clock import Clock
from oxyd.config import Config
from oxyd.model import IDLE, PARKED, State
from oxyd.store.writer import Writer
from oxyd.supervision.outcome import ACTIONS

if TYPE_CHECKING:
    from oxyd.supervision.runner import Runner


class HealthSweep:
    """The Supervisor's health sweep (a mixin: the members below are the Supervisor's)."""

    cfg: Config
    clock: Clock
    writer: Writer
    runners: dict[str, Runner]
    broken: str | None
    last_health: dict[str, Any] | None

    if TYPE_CHECKING:  # the Supervisor's own (a stub here would shadow it)

        def counts_by_state(self) -> Counter[str]: ...
        async def restart_tenant(
            self, tenant_id: str, *, limited: bool = False
        ) -> dict[str, Any]: ...

    async def health_sweep(self) -> dict[str, Any]:
        """Counts, and catches what the per-tenant heartbeat cannot: a tenant task that died
        or hangs while its state says it is working."""
        cfg = self.cfg.supervisor
        now = self.clock.monotonic()
        healthy = reconnected = failed = 0
        alerts: list[dict[str, Any]] = []
        for tid, r in list(self.runners.items()):
            st = r.t.state
            if st in PARKED:
                failed += 1
                alerts.append(
                    {
                        "tenant": tid,
                        "state": str(st),
                        "reason": r.t.last_error,
                        "action": ACTIONS.get(st),
                    }
                )
                continue
            if st in IDLE or (st is State.BANNED and r.running):
                continue
            alive = max(r.last_ok_mono, r.last_event_mono)
            stuck = st is State.CONNECTED and now - alive > cfg.zombie_after_s + cfg.heartbeat_s
            if not r.running or stuck:
                why = "tenant task not running" if not r.running else "heartbeat stalled"
                r.log.warning("health sweep: {} while {}; restarting", why, st)
                try:
                    await self.restart_tenant(tid)
                except Exception as e:  # one tenant's trouble never ends the sweep
                    r.log.opt(exception=e).error("health sweep could not restart it: {}", e)
                    why = f"{why}; restart failed: {e}"
                alerts.append(
                    {
                        "tenant": tid,
                        "state": str(st),
                        "reason": why,
                        "action": "restarted by the health sweep",
                    }
                )
                reconnected += 1
            elif st is State.CONNECTED:
                healthy += 1
        self._clear_broken()
        if self.writer.failing:
            alerts.append(
                {
                    "tenant": None,
                    "state": "storage",
                    "reason": self.writer.stats.last_error,
                    "action": "check free disk space and the data directory's"
                    " permissions; writes are retried, nothing is dropped",
                }
            )
        self.last_health = {
            "checked_at_ms": self.clock.now_ms(),
            "total": len(self.runners),
            "healthy": healthy,
            "reconnected": reconnected,
            "failed": failed,
            "by_state": dict(self.counts_by_state()),
            "alerts": alerts,
        }
        return self.last_health

    def _clear_broken(self) -> None:
        """`broken` names a dead tenant task; once the health sweep has restarted every such
        task, readiness comes back by itself."""
        if self.broken is not None and all(
            r.running
            or r.task is None
            or not r.task.done()
            or r.task.cancelled()
            or r.task.exception() is None
            for r in self.runners.values()
        ):
            logger.info("every tenant task runs again: supervisor ready")
            self.broken = None
