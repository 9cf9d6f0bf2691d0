"""Reading a request's input: the body (bounded), JSON objects, fields and query parameters.

Every refusal is an ApiError whose message starts with the field or parameter it is about.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from oxyd.http.keys import APP
from oxyd.http.replies import ApiError


def body_limit_bytes(request: web.Request) -> int:
    return request.app[APP].cfg.http.max_body_bytes


async def read_limited(request: web.Request, limit_bytes: int) -> bytes:
    """The body, refused with 413 past `limit_bytes` without reading it all."""
    too_large = ApiError(413, "body_too_large", f"the body exceeds {limit_bytes} bytes")
    if request.content_length is not None and request.content_length > limit_bytes:
        raise too_large
    # read(n) returns whatever has arrived (up to n), not n bytes: loop until EOF.
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(limit_bytes + 1 - total):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit_bytes:
            raise too_large
    return b"".join(chunks)


def parse_json_object(raw: bytes, *, required: bool) -> dict[str, Any]:
    """An empty body is {} unless a body is required; anything but an object is 400."""
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_body", "a JSON object body is required")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise ApiError(400, "invalid_json", "the body holds a lone UTF-16 surrogate (\\ud800..)")
    return body


# A lone surrogate (`"\ud800"`) is valid JSON but no text: nothing can store or send it. Only a
# body with such an escape is re-encoded to find one (an emoji is often sent as a pair of them).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(body: Any) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def check_fields(
    body: dict[str, Any],
    allowed: dict[str, type | tuple],
    required: tuple[str, ...] = (),
    prefix: str = "",
) -> dict[str, Any]:
    """Field-by-field type check; every error names the field (with `prefix` when nested)."""
    for key, value in body.items():
        if key not in allowed:
            raise ApiError(400, "unknown_field", f"{prefix}{key}: unknown field")
        tp = allowed[key]
        if value is None and key not in required:
            continue
        # bool is an int subclass in Python but not in JSON: refuse true where a number goes.
        bad = not isinstance(value, tp) or (isinstance(value, bool) and bool not in _tuple(tp))
        if bad:
            raise ApiError(400, "invalid_field", f"{prefix}{key}: must be {_type_name(tp)}")
    for key in required:
        if body.get(key) is None:
            raise ApiError(400, "missing_field", f"{prefix}{key}: is required")
    return body


async def json_body(
    request: web.Request,
    *,
    allowed: dict[str, type | tuple],
    required: tuple[str, ...] = (),
    optional_body: bool = False,
    limit_bytes: int | None = None,
) -> dict[str, Any]:
    """Parse and check a JSON object body field by field; errors name the field."""
    raw = await read_limited(request, limit_bytes or body_limit_bytes(request))
    body = parse_json_object(raw, required=bool(required) and not optional_body)
    return check_fields(body, allowed, required)


def _tuple(tp: type | tuple) -> tuple:
    return tp if isinstance(tp, tuple) else (tp,)


def _type_name(tp: type | tuple) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        dict: "an object",
        list: "an array",
    }
    return " or ".join(names.get(t, t.__name__) for t in _tuple(tp))


def query_param(request: web.Request, name: str) -> str | None:
    """One query value: a repeated parameter is ambiguous, so it is refused."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"{name}: give it once")
    return values[0] if values else None


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = query_param(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name}: must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name}: must be between {lo} and {hi}")
    return value


def bool_param(request: web.Request, name: str) -> bool:
    raw = query_param(request, name)
    if raw is None:
        return False
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid_parameter", f"{name}: must be true or false")
    return raw in ("true", "1")


async def no_body(request: web.Request) -> None:
    """Action routes take no fields; an empty body or {} is fine, anything else is 400."""
    await json_body(request, allowed={})
