"""One delivery attempt and what it decides: the signature, the outcome of a POST (ok,
retry or dead), the delay before a retry (Retry-After or exponential backoff with jitter),
and the counts /metrics shows. Nothing here touches the outbox."""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import hmac
import random
from dataclasses import dataclass
from datetime import UTC

import aiohttp
import yarl
from tenacity import RetryCallState, wait_exponential

from oxyd import __version__

USER_AGENT = f"oxyd/{__version__}"
JITTER = 0.25  # a retry delay is drawn from [d * (1 - JITTER), d]: spread out, still growing


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff_s(
    attempts: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Delay after the `attempts`-th failed attempt (1 = the first): tenacity's exponential
    curve min(cap, base * 2**(attempts-1)), shrunk by up to JITTER so that destinations that
    failed together do not retry together."""
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempts)
    d = wait_exponential(multiplier=base_s, exp_base=2, max=cap_s)(state)
    return d * (1 - JITTER * (rng or random).random())


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, at.timestamp() - now_s)


def host_of(url: str) -> str:
    """What may appear in logs and errors: never the path, query or credentials."""
    try:
        return yarl.URL(url).host or "?"
    except (ValueError, TypeError):
        return "?"


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    secret: str
    guarded: bool = False  # set with a tenant token: no private or loopback destination


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    retry: bool = False  # a failure worth another attempt (network, timeout, 5xx, 408, 429)
    error: str | None = None
    retry_after_s: float | None = None


@dataclass
class DispatchStats:
    """Attempt results, for /metrics. Each attempt counts once: delivered (2xx), retried
    (will be tried again), failed_4xx (refused by the receiver: dead at once) or dead (out of
    attempts or age, or no destination configured)."""

    delivered: int = 0
    retried: int = 0
    failed_4xx: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def describe_error(e: BaseException, url: str, timeout_s: float) -> str:
    # aiohttp's messages can embed the URL (with credentials); keep only what helps.
    if isinstance(e, TimeoutError):
        return f"timeout after {timeout_s:g}s"
    if isinstance(e, aiohttp.ClientConnectorError):
        return (
            f"cannot connect to {host_of(url)}: {e.os_error.strerror or type(e.os_error).__name__}"
        )
    text = str(e).replace(url, host_of(url))
    return f"{type(e).__name__}: {text}"[:300]
