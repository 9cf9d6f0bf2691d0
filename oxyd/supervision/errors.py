"""What an operator request that cannot be done raises; the HTTP layer maps it to an error
answer. A leaf: the HTTP side catches these without importing the supervisor."""

from __future__ import annotations


class TenantError(Exception):
    """An operator request that cannot be done; `code` is the API error code."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class RateLimited(TenantError):
    def __init__(
        self, retry_after_s: float, message: str = "send rate limit reached; retry later"
    ) -> None:
        super().__init__("rate_limited", message, 429)
        self.retry_after_s = retry_after_s
