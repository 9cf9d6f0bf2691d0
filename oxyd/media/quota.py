"""The media quota alert: `alert.media_quota` once per tenant, durably.

Once means: one alert when a tenant's media first hits `media.quota_mb`, then none (a restart
included: the fact is a row of `media_quota_alerts`, committed with the alert's webhook rows)
until the tenant's usage falls below what it was at the alert (retention or an operator freed
space) or the quota changes. Then the next file that does not fit alerts again.
"""

from __future__ import annotations

from collections.abc import Mapping

from loguru import logger

from oxyd.clock import Clock
from oxyd.store import outbox
from oxyd.store.media import MediaTable

MIB = 1 << 20


class QuotaAlerts:
    def __init__(self, table: MediaTable, clock: Clock) -> None:
        self.table = table
        self.clock = clock
        # tenant -> (quota_bytes, used_bytes) of the alert already sent (the table, cached)
        self._sent: dict[str, tuple[int, int]] = {}

    async def load(self, used_by_tenant: Mapping[str, int], quota_bytes: int) -> None:
        self._sent = await self.table.quota_alerts()
        await self.rearm(used_by_tenant, quota_bytes)

    async def rearm(self, used_by_tenant: Mapping[str, int], quota_bytes: int) -> None:
        """Forget the alerts whose condition is over: usage went down since, or the quota is
        another one now (0: no quota at all)."""
        over = [
            t
            for t, (quota, used) in self._sent.items()
            if quota != quota_bytes or used_by_tenant.get(t, 0) < used
        ]
        if over:
            await self.table.forget_quota_alerts(over)
            for t in over:
                self._sent.pop(t, None)

    async def reached(self, tenant: str, used_bytes: int, quota_bytes: int) -> bool:
        """A file of `tenant` did not fit: send the alert unless it was sent for this quota.
        Returns whether it was sent now (the caller wakes the webhook dispatcher)."""
        sent = self._sent.get(tenant)
        if sent is not None and sent[0] == quota_bytes:
            return False
        # Claimed before the await: two files refused at once send one alert.
        self._sent[tenant] = (quota_bytes, used_bytes)
        data = {
            "reason": f"media quota reached: {used_bytes} of {quota_bytes} bytes used",
            "used_bytes": used_bytes,
            "quota_bytes": quota_bytes,
            "action": "raise media.quota_mb, lower media.retention_days, or delete media;"
            " skipped files can be fetched later with POST .../messages/{msg_id}/media",
        }
        now_ms = self.clock.now_ms()
        rows = outbox.rows(self.table.subs, tenant, "alert.media_quota", data, now_ms)
        try:
            await self.table.record_quota_alert(tenant, quota_bytes, used_bytes, now_ms, rows)
        except BaseException:
            if self._sent.get(tenant) == (quota_bytes, used_bytes):
                del self._sent[tenant]  # not sent: the next refused file tries again
            raise
        logger.bind(tenant=tenant).warning(
            "media quota reached ({} of {} MiB); new media is skipped",
            used_bytes // MIB,
            quota_bytes // MIB,
        )
        return True
