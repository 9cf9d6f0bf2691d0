"""Secrets never reach the log, in the message or in an exception's text, in either format."""

import io
import sys

import pytest
from loguru import logger

from oxyd import log


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_exception_text_is_scrubbed(fmt, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    secret = "whsec-very-secret-value-123"
    log.redact(secret)
    log.redact("short")  # too short to be a secret worth matching
    # The sinks and patcher log.setup installs, without removing the test's own handler.
    logger.configure(patcher=log._patch)
    if fmt == "json":
        handler = logger.add(log._json_sink, level="INFO")
    else:
        handler = logger.add(log._text_sink, level="INFO", format=log._text_format)
    try:
        raise RuntimeError(f"POST https://user:{secret}@example.com failed")
    except RuntimeError:
        logger.exception("delivery failed for {}", secret)
    finally:
        logger.remove(handler)
        logger.configure(patcher=lambda record: None)
    text = out.getvalue()
    assert "delivery failed for ***" in text
    assert secret not in text and "user:***@example.com" in text


def test_the_matcher_is_one_pattern_and_longest_first():
    log.redact("abcdef-secret")
    log.redact("abcdef-secret-longer")
    assert log._pattern is not None
    assert log._scrub("x abcdef-secret-longer y abcdef-secret") == "x *** y ***"
