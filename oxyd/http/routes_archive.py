"""GET and PUT /v1/tenants/{id}/archive: one tenant's complete archive, by hand (design §16).

The same archive format as cluster moves (oxyd/cluster/archive.py): export a tenant from one
daemon, import it into another (then remove it from the first). In cluster mode both routes
land on the tenant's owner like every tenant route.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time

from aiohttp import web

from oxyd.cluster import archive, handover
from oxyd.http import shapes as s
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError
from oxyd.store import tenant_rows

table = web.RouteTableDef()
CONTENT_TYPE = "application/x-tar"
TAR = {CONTENT_TYPE: {"schema": s.string(fmt="binary")}}
SHA_HEADER = "X-Oxyd-Archive-Sha256"


def _node(request: web.Request) -> int | None:
    node = request.app[APP].extras.get("cluster")
    return None if node is None else node.me


@operation(
    table.get,
    "/v1/tenants/{id}/archive",
    "Export the tenant's archive (its client pauses while the snapshot is taken)",
    access="admin",
    ok=(200, {"description": "The archive", "content": TAR}),
)
async def export_archive(request: web.Request, inp: Input) -> web.StreamResponse:
    """Stops the tenant's client for the moment the snapshot takes, then starts it again."""
    tid = inp.tenant
    assert tid is not None
    app = request.app[APP]
    path = handover.work_dir(app, "out", f"{tid}.{time.time_ns()}.export.tar")
    runner = await handover.detach(app, tid)
    try:
        manifest = await handover.export(app, tid, path, _node(request))
    finally:
        await handover.attach(app, tid, runner)
    try:
        sha = await asyncio.to_thread(archive.sha256_file, path)
        size = (await asyncio.to_thread(path.stat)).st_size
        resp = web.StreamResponse(
            headers={
                "Content-Type": CONTENT_TYPE,
                "Content-Disposition": f'attachment; filename="{tid}.oxyd.tar"',
                "X-Oxyd-Archive-Sha256": sha,
                "X-Oxyd-Archive-Rows": str(sum(manifest["rows"].values())),
            }
        )
        resp.content_length = size
        await resp.prepare(request)
        with open(path, "rb") as f:  # noqa: ASYNC230 (each read runs in a thread)
            while chunk := await asyncio.to_thread(f.read, archive.CHUNK):
                await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)


@operation(
    table.put,
    "/v1/tenants/{id}/archive",
    "Import a tenant archive (made by GET .../archive or a cluster move) and start it",
    access="admin",
    ok=(201, s.json_response(s.ref("Tenant"), "The tenant object")),
    errors=(409,),
    tenant_exists=False,
    raw_body=True,
    request_content=TAR,
    headers={SHA_HEADER: s.string(description="the archive's sha256 (hex): a mismatch is 400")},
)
async def import_archive(request: web.Request, inp: Input) -> web.Response:
    """201 with the tenant object, started; 409 when the tenant exists here."""
    tid = inp.tenant
    assert tid is not None
    app = request.app[APP]
    if tid in app.supervisor.runners:
        raise ApiError(409, "tenant_exists", f"tenant {tid!r} exists already")
    path = handover.work_dir(app, "in", f"{tid}.{time.time_ns()}.import.tar")
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
    try:
        sha = await save_body(request, path)
        want = inp.headers.get(SHA_HEADER)
        if want and want.lower() != sha:
            raise ApiError(400, "invalid_archive", "the body's sha256 differs from the header's")
        data = await handover.import_archive(app, tid, path)
    except archive.ArchiveError as e:
        raise ApiError(400, e.code, e.message) from None
    except tenant_rows.ImportRefused as e:
        raise ApiError(409, e.code, e.message) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)
    return web.json_response(data, status=201)


async def save_body(request: web.Request, path) -> str:
    """Stream the request body to `path` (0600, fsynced); its sha256."""
    h = hashlib.sha256()
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    f = os.fdopen(fd, "wb")
    try:
        async for chunk in request.content.iter_chunked(archive.CHUNK):
            h.update(chunk)
            await asyncio.to_thread(f.write, chunk)
        await asyncio.to_thread(f.flush)
        await asyncio.to_thread(os.fsync, f.fileno())
    finally:
        f.close()
    return h.hexdigest()
