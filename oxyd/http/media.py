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
from oxyd.http.access import tenant_id
from oxyd.http.inputs import no_body
from oxyd.http.keys import APP
from oxyd.http.replies import ApiError, ok
from oxyd.media import files
from oxyd.media.downloader import Downloads

table = web.RouteTableDef()

MSG_ID_RE = re.compile(r"[0-9A-Za-z._:-]{1,128}")
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


@table.get("/v1/tenants/{id}/media/{sha256}")
async def get_media(request: web.Request) -> web.StreamResponse:
    tid = tenant_id(request)
    sha = request.match_info["sha256"]
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
        raise _not_found(sha) from None  # deleted behind oxyd's back
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


@table.post("/v1/tenants/{id}/messages/{msg_id}/media")
async def retry_media(request: web.Request) -> web.Response:
    tid = tenant_id(request)
    await no_body(request)
    msg_id = request.match_info["msg_id"]
    if not MSG_ID_RE.fullmatch(msg_id):
        raise ApiError(404, "message_not_found", "no message with this id")
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
