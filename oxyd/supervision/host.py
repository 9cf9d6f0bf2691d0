"""What a Runner needs from whoever owns it (the Supervisor), named as a Protocol so a runner
depends on these members only and never imports the supervisor."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from oxyd.backoff import ConnectGate
from oxyd.clock import Clock
from oxyd.config import Config
from oxyd.engine import Engine
from oxyd.ratelimit import TokenBucket
from oxyd.store.db import Store
from oxyd.store.outbox import Subscriptions
from oxyd.store.writer import Writer

if TYPE_CHECKING:
    from oxyd.supervision.runner import Runner

T = TypeVar("T")


class Host(Protocol):
    """What a Runner needs from whoever owns it (the Supervisor). Named here, so a runner
    depends on these members only and never imports the supervisor."""

    cfg: Config
    clock: Clock
    engines: dict[str, Engine]
    store: Store
    writer: Writer
    subs: Subscriptions
    gate: ConnectGate
    rng: random.Random
    reconnects: Counter[str]
    runners: dict[str, Runner]  # every tenant's, to tell an outage from a tenant's own failure

    def send_bucket(self) -> TokenBucket: ...
    def runner_done(self, task: asyncio.Task) -> None: ...
    async def bounded(self, aw: Awaitable[T], timeout_s: float) -> T: ...
    async def persist(self, r: Runner, alert: str | None) -> None: ...
    async def zombie(self, r: Runner, silent_s: float, why: str = ...) -> None: ...
    def publish(self, event: dict[str, Any]) -> None: ...
