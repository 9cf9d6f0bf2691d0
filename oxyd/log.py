"""Logging: loguru to stderr (text or JSON lines), with stdlib logging routed into it.

The only module that configures loguru. Other modules `from loguru import logger` and bind a
tenant id as context (`logger.bind(tenant=tid)`), which both formats show.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from typing import Any

from loguru import logger

# Values registered here are replaced by "***" in every log line, as a last line of defence:
# code must not log secrets, but a library echoing a URL or header must not leak one either.
_secrets: set[str] = set()

# Chatty libraries, kept at WARNING unless oxyd itself runs at DEBUG.
_QUIET = ("aiohttp.access", "aiosqlite", "apscheduler", "neonize", "asyncio", "hpack")


# One compiled alternation of every secret (longest first, so a secret containing another is
# replaced whole): one scan per line however many tenants registered webhook secrets.
_pattern: re.Pattern[str] | None = None


def redact(secret: str | None) -> None:
    global _pattern
    if secret and len(secret) >= 6 and secret not in _secrets:
        _secrets.add(secret)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(map(re.escape, ordered)))


def _scrub(text: str) -> str:
    pattern = _pattern
    return pattern.sub("***", text) if pattern is not None else text


def _patch(record: dict[str, Any]) -> None:
    record["message"] = _scrub(record["message"])
    record["extra"].setdefault("tenant", None)


def _json_sink(message: Any) -> None:
    rec = message.record
    out = {
        "ts": rec["time"].isoformat(),
        "level": rec["level"].name,
        "msg": rec["message"],
        "logger": rec["name"],
    }
    for k, v in rec["extra"].items():
        if v is not None:
            out[k] = v if isinstance(v, str | int | float | bool) else str(v)
    if rec["exception"] is not None:
        exc = rec["exception"]
        out["exception"] = _scrub(
            "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
        )
    sys.stderr.write(json.dumps(out, ensure_ascii=False) + "\n")
    sys.stderr.flush()


def _text_format(record: dict[str, Any]) -> str:
    tenant = "[{extra[tenant]}] " if record["extra"].get("tenant") else ""
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        + tenant
        + "<level>{message}</level>\n{exception}"
    )


def _text_sink(message: Any) -> None:
    # The formatted line includes the exception's traceback, whose text (an error message
    # echoing a URL or a header) the patcher never saw: scrub the whole line, as the JSON
    # sink does.
    sys.stderr.write(_scrub(str(message)))
    sys.stderr.flush()


class _Intercept(logging.Handler):
    """Forwards stdlib records (aiohttp, aiosqlite, apscheduler, neonize) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info, depth=0).bind(lib=record.name).log(
            level, record.getMessage()
        )


def setup(level: str = "INFO", fmt: str = "text") -> None:
    level = level.upper()
    logger.remove()
    logger.configure(patcher=_patch)
    if fmt == "json":
        logger.add(_json_sink, level=level, backtrace=False, diagnose=False)
    else:
        colorize = sys.stderr.isatty()
        logger.add(
            _text_sink,
            level=level,
            format=_text_format,
            colorize=colorize,
            backtrace=False,
            diagnose=False,
        )
    root = logging.getLogger()
    root.handlers = [_Intercept()]
    root.setLevel(logging.DEBUG if level in ("TRACE", "DEBUG") else logging.INFO)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "TRACE" else logging.WARNING)
