"""The control port's HTTP connection handler: JSON errors even for requests aiohttp's parser
refuses before any middleware runs.

A request line or header that is too long, broken chunked encoding or an unsupported
Content-Encoding is answered by aiohttp's RequestHandler.handle_error in plain text; this
handler answers the same status in the one error format, `{"error": {"code", "message"}}`.
The message names the problem, never echoes the offending bytes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from oxyd.http.replies import STATUS_CODES, error_response

# Most specific first: several of these subclass BadHttpMessage.
_REASONS: tuple[tuple[type[BaseException], str, str], ...] = (
    (http_exceptions.LineTooLong, "header_too_large", "a request or header line is too long"),
    (http_exceptions.ContentEncodingError, "bad_encoding", "the Content-Encoding is not supported"),
    (http_exceptions.TransferEncodingError, "bad_encoding", "the chunked encoding is broken"),
    (http_exceptions.BadHttpMethod, "bad_request", "not an HTTP request"),
    (http_exceptions.InvalidHeader, "bad_request", "a header is malformed"),
    (http_exceptions.BadHttpMessage, "bad_request", "the HTTP request is malformed"),
)


class JsonErrorsHandler(RequestHandler):
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp logs the error and refuses if a response has started; its text body is dropped.
        super().handle_error(request, status, exc, message)
        code, text = STATUS_CODES.get(status, "http_error"), "the request was refused"
        if status >= 500:
            code, text = "internal_error", "internal error; see the daemon's log"
        else:
            for kind, kind_code, kind_text in _REASONS:
                if isinstance(exc, kind):
                    code, text = kind_code, kind_text
                    break
        resp = error_response(status, code, text)
        resp.force_close()  # as aiohttp's own: the connection's framing cannot be trusted
        return resp


class _JsonErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorsRunner(web.AppRunner):
    """An AppRunner whose connections answer parser errors in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorsServer  # same state; only the handler class differs
        return server
