"""Network-wide outages: most of an engine's tenants failing at the same time.

When DNS, the route or a proxy is down, every tenant's attempts fail together. Counting those
failures against `max_failures` would park every tenant in `failed` (which needs a person)
during a long outage, and nobody would come back by themselves when the network does. So a
failure counts toward parking only when it is the tenant's own: at the moment it happens, fewer
than MIN_TENANTS, or less than SHARE, of the engine's active tenants are failing. Backoff still
grows with every failure (capped at `backoff_cap_s`), so an outage is not hammered and every
tenant tries again within the cap once the network is back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from oxyd import model as m
from oxyd.model import State

SHARE = 0.5  # of the engine's active tenants failing at once: the network, not the tenant
# At least this many failing at once: a deployment of one or two tenants cannot tell an outage
# from its own failure, and keeps its circuit breaker.
MIN_TENANTS = 3

_ACTIVE = frozenset({State.CONNECTING, State.CONNECTED, State.RECONNECTING, State.BACKOFF})


class _Tenanted(Protocol):
    t: m.Tenant


def _failing(t: m.Tenant) -> bool:
    """Between a failure and the next success: waiting to retry, reconnecting, or retrying."""
    return t.state in (State.BACKOFF, State.RECONNECTING) or (
        t.state is State.CONNECTING and t.failures > 0
    )


def widespread(runners: Iterable[_Tenanted], me: _Tenanted) -> bool:
    """Whether `me`'s failure, happening now, is part of a network-wide one."""
    active = failing = 0
    for r in runners:
        t = r.t
        if t.engine != me.t.engine:
            continue
        if r is me:
            active += 1
            failing += 1
        elif t.state in _ACTIVE:
            active += 1
            failing += _failing(t)
    return failing >= MIN_TENANTS and failing >= SHARE * active
