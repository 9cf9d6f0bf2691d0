"""Webhook events as outbox rows: who is subscribed to what, and the event body.

The rows are written in the same transaction as the data they describe (see batch.py and
Store.save_state), so a crash leaves both or neither; webhooks.py delivers them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from oxyd.config import WEBHOOK_EVENTS

ALERTS = tuple(e for e in WEBHOOK_EVENTS if e.startswith("alert."))
GLOBAL = "global"


def tenant_destination(tenant_id: str) -> str:
    return f"t:{tenant_id}"


class Subscriptions:
    """In-memory copy of which destination wants which event type, kept current by the
    routes that change webhooks, so the writer's hot path does no lookups."""

    def __init__(self, global_events: tuple[str, ...] | None = None) -> None:
        # None: no global destination. An empty tuple in the config means "alerts only":
        # the operator's destination is for trouble, not for every message of every tenant.
        self._global = None if global_events is None else frozenset(global_events or ALERTS)
        self._tenants: dict[str, frozenset[str]] = {}

    def set_tenant(self, tenant_id: str, events: list[str] | tuple[str, ...] | None) -> None:
        self._tenants[tenant_id] = frozenset(events or WEBHOOK_EVENTS)

    def remove_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)

    def destinations(self, tenant_id: str | None, event_type: str) -> list[str]:
        out = []
        if tenant_id is not None:
            wanted = self._tenants.get(tenant_id)
            if wanted is not None and event_type in wanted:
                out.append(tenant_destination(tenant_id))
        if self._global is not None and event_type in self._global:
            out.append(GLOBAL)
        return out

    def wants(self, tenant_id: str | None, event_type: str) -> bool:
        return bool(self.destinations(tenant_id, event_type))


def body(event_id: str, event_type: str, tenant_id: str | None, at_ms: int, data: Any) -> str:
    return json.dumps(
        {"id": event_id, "type": event_type, "tenant": tenant_id, "at_ms": at_ms, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def rows(
    subs: Subscriptions, tenant_id: str | None, event_type: str, data: Any, at_ms: int
) -> list[tuple]:
    """Outbox rows (event_id, destination, tenant, type, body, created_at_ms); [] when no
    destination wants this event type."""
    dests = subs.destinations(tenant_id, event_type)
    if not dests:
        return []
    event_id = uuid.uuid4().hex
    text = body(event_id, event_type, tenant_id, at_ms, data)
    return [(event_id, d, tenant_id, event_type, text, at_ms) for d in dests]
