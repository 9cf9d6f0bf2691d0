"""HTTP API for incoming media (design §11): the stored files and on-demand retries.

Files are sent with `web.FileResponse` (sendfile: never read into memory), which also answers
`Range` (206), `If-None-Match` (304 against its ETag) and HEAD. A hash is looked up among the
requesting tenant's own stored media only, so a tenant cannot probe for another's files.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from oxyd.engine import EngineError
from oxyd.http import shapes as s
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok
from oxyd.media import files
from oxyd.media.downloader import Downloads

table = web.RouteTableDef()

MSG_ID_PATTERN = r"^[0-9A-Za-z._:-]{1,128}$"
BYTES = {"description": "The file", "content": {"*/*": {"schema": {"type": "string"}}}}
MIME_RE = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[A-Za-z0-9][\w.+-]{0,127}(; ?[\w.+-]+=[\w.+\"-]+)*")
# Types a browser would run or render as a page: always a download, never inline.
ACTIVE_TYPES = (
    "text/html",
    "image/svg+xml",
    "application/xhtml+xml",
    "text/xml",
    "application/xml",
)


def downloads(request: web.Request) -> Downloads:
    return request.app[APP].extras["media"]


def _not_found(sha256: str) -> ApiError:
    return ApiError(404, "media_not_found", f"no stored media {sha256[:80]!r} for this tenant")


@operation(
    table.get,
    "/v1/tenants/{id}/media/{sha256}",
    "A stored media file (sendfile; Range, ETag, If-None-Match)",
    ok=(200, BYTES),
    # No pattern: a malformed hash answers 404 exactly like one this tenant never received.
    path_params={"sha256": s.string(max_length=128)},
    errors=(404, 416),
    responses={
        206: {**BYTES, "description": "The requested range"},
        304: {"description": "Not modified (If-None-Match)"},
    },
)
async def get_media(request: web.Request, inp: Input) -> web.StreamResponse:
    tid = inp.tenant
    assert tid is not None
    sha = inp.path["sha256"]
    if not files.SHA256_RE.fullmatch(sha):
        raise _not_found(sha)
    app = request.app[APP]
    mime = await downloads(request).table.stored_file(tid, sha)
    if mime is None:
        raise _not_found(sha)
    path = files.path_of(app.cfg.data_dir, tid, sha)
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
    except FileNotFoundError:
        # Lost behind oxyd's back (a restore without media, deleted by hand): its messages
        # go back to pending and the file is downloaded again.
        await downloads(request).file_missing(tid, sha)
        raise ApiError(
            404,
            "media_not_found",
            "this file is missing from disk; it is being downloaded again"
            " (the message's media.status tells when it is back, or why not)",
        ) from None
    _check_range(request, size)
    ctype = mime if MIME_RE.fullmatch(mime or "") else "application/octet-stream"
    headers = {
        "Content-Type": ctype,
        # Content-addressed: the bytes under this URL never change.
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        # Sender-controlled bytes served from the API's origin: never let them run as a page.
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    if ctype.split(";")[0].strip().lower() in ACTIVE_TYPES:
        headers["Content-Disposition"] = "attachment"
    return web.FileResponse(path, headers=headers)


def _check_range(request: web.Request, size: int) -> None:
    """FileResponse answers a bad Range with an empty 416; answer it in the API's format."""
    unsatisfiable = ApiError(
        416,
        "range_not_satisfiable",
        f"the file has {size} bytes; that range is outside it or malformed",
        {"Content-Range": f"bytes */{size}"},
    )
    try:
        rng = request.http_range
    except ValueError:
        raise unsatisfiable from None
    if rng.start is not None and rng.start >= 0 and rng.start >= size:
        raise unsatisfiable
    if rng.start is not None and rng.stop is not None and rng.start >= rng.stop:
        raise unsatisfiable


@operation(
    table.post,
    "/v1/tenants/{id}/messages/{msg_id}/media",
    "Download a message's media again (after failed or skipped)",
    ok=(202, s.json_response(s.ref("Message"), "The message: 202 queued, 200 stored already")),
    path_params={"msg_id": s.string(pattern=MSG_ID_PATTERN)},
    errors=(404, 409),
    responses={200: s.json_response(s.ref("Message"), "Stored already: nothing to do")},
)
async def retry_media(request: web.Request, inp: Input) -> web.Response:
    tid = inp.tenant
    assert tid is not None
    msg_id = inp.path["msg_id"]
    store = request.app[APP].store
    try:
        queued, job = await downloads(request).retry(tid, msg_id)
    except EngineError as e:
        raise ApiError(409, "media_unavailable", str(e)) from None
    msg = await store.message_by_wa_id(tid, msg_id)
    if msg is None:
        raise ApiError(404, "message_not_found", f"no message {msg_id!r} in this tenant")
    if job is None:
        raise ApiError(409, "no_media", "this message carries no media")
    # 202: a download is queued or running; 200: stored already, nothing to do.
    return ok(msg, 200 if job.status == "stored" and not queued else 202)
