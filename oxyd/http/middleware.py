"""The control port's middlewares: one error format, request metrics, list-cache invalidation.

The errors middleware turns every exception into `{"error": {"code", "message"}}`, including
aiohttp's own 404/405/413, so no input makes the server answer with a stack trace or HTML.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestPayloadError
from loguru import logger

from oxyd.engine import EngineError
from oxyd.http.replies import STATUS_CODES, ApiError, error_response
from oxyd.supervision.errors import TenantError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What aiohttp decompresses itself (br and zstd only with optional libraries: not relied on).
DECODED_ENCODINGS = ("identity", "gzip", "deflate")
_ENCODING_ERRORS = (http_exceptions.ContentEncodingError, http_exceptions.TransferEncodingError)


def _http_exception_message(request: web.Request, e: web.HTTPException) -> str:
    if e.status == 404:
        return f"no route {request.method} {request.path}"
    if e.status == 405:
        allowed = e.headers.get("Allow", "")
        return f"{request.method} is not allowed here; allowed: {allowed}"
    return e.reason or STATUS_CODES.get(e.status, "http error")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding and encoding not in DECODED_ENCODINGS:
        # aiohttp passes an encoding it does not know through as if it were identity: the body
        # would be read as garbage (or worse, as valid JSON by accident).
        return error_response(
            415,
            "unsupported_encoding",
            f"Content-Encoding must be one of {list(DECODED_ENCODINGS)} (or none)",
        )
    try:
        return await handler(request)
    except (http_exceptions.HttpProcessingError, RequestPayloadError) as e:
        # The body's framing or compression broke while a handler read it (bad gzip, a chunk
        # that is not one): the client's fault, and the connection cannot be reused.
        cause = e.__cause__ if isinstance(e, RequestPayloadError) else e
        code = "bad_encoding" if isinstance(cause, _ENCODING_ERRORS) else "bad_request"
        resp = error_response(400, code, "the request body could not be decoded")
        resp.force_close()
        return resp
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except TenantError as e:
        headers = None
        retry_after_s = getattr(e, "retry_after_s", None)
        if e.status == 429:
            # Whole seconds, rounded up: a client that waits exactly this long gets a token.
            headers = {"Retry-After": str(max(1, int((retry_after_s or 1) + 0.999)))}
        return error_response(e.status, e.code, e.message, headers)
    except EngineError as e:
        # The engine refused (e.g. a device store that cannot be read): the tenant's trouble,
        # not a server bug.
        return error_response(409, "engine_error", str(e) or "the engine refused")
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "body_too_large", "the request body is too large")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = STATUS_CODES.get(e.status, "http_error")
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return error_response(e.status, code, _http_exception_message(request, e), headers)
    except Exception as e:
        logger.opt(exception=e).error("unhandled error on {} {}", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the daemon's log")


def route_label(request: web.Request) -> str:
    """The route's template ("/v1/tenants/{id}"), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(observe: Callable[[str, str, int, float], None]):
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:  # redirects re-raised by `errors`
            status = e.status
            raise
        finally:
            observe(route_label(request), request.method, status, time.perf_counter() - started)

    return count


def invalidate_on_write(cache: Any):
    @web.middleware
    async def invalidate(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                cache.invalidate()

    return invalidate
