"""Webhooks: the durable outbox dispatcher (dispatcher.py) and one delivery attempt
(attempt.py: signature, outcome, retry delay)."""

from oxyd.webhooks.attempt import USER_AGENT, backoff_s, retry_after_s, sign
from oxyd.webhooks.dispatcher import Dispatcher

__all__ = ["USER_AGENT", "Dispatcher", "backoff_s", "retry_after_s", "sign"]
