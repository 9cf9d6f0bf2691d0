"""Config errors: each names its key path; while load() runs they are collected, so every
error of a file and the environment is reported in one run."""

from __future__ import annotations

import typing
from contextvars import ContextVar


class ConfigError(ValueError):
    """One or more errors, each `key.path: what is wrong`; str() has one per line."""

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# While load() runs, checks append here instead of raising: every error is reported at once.
_COLLECTED: ContextVar[list[str] | None] = ContextVar("oxyd_config_errors", default=None)


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        _report(f"{path}: {message}")


def _report(error: str) -> None:
    sink = _COLLECTED.get()
    if sink is None:
        raise ConfigError(error)
    sink.append(error)


def _require(ok: bool, path: str, message: str) -> None:
    """Like _check, but always raises: the caller cannot go on with the value."""
    if not ok:
        raise ConfigError(f"{path}: {message}")


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _unknown(path: str, key: str, known: typing.Iterable[str], where: str = "") -> str:
    """`path: unknown key`, with the closest known key within edit distance 2."""
    close = sorted((_edit_distance(key, k), k) for k in known)
    hint = f" (did you mean {close[0][1]!r}?)" if close and close[0][0] <= 2 else ""
    return f"{path}: unknown key{hint}{where}"
