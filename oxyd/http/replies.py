"""What the control port answers: success bodies and the one error format.

Every answer that is not a success is `{"error": {"code", "message"}}`; handlers raise ApiError
and the errors middleware (middleware.py) turns it, and every other exception, into that body.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

# The code for each HTTP status aiohttp itself may raise (404, 405, 413, ...).
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)
