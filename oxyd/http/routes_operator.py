"""What an operator asks of the daemon as a whole (admin token): the last health sweep, and the
encrypted backups of the data directory (take one now, list them)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from oxyd import backup
from oxyd.http import shapes as s
from oxyd.http.keys import APP
from oxyd.http.operation import Input, operation
from oxyd.http.replies import ApiError, ok

table = web.RouteTableDef()

HEALTH = s.obj(
    {
        "checked_at_ms": s.INT,
        "total": s.INT,
        "healthy": s.INT,
        "reconnected": s.INT,
        "failed": s.INT,
        "alerts": s.array({"type": "object"}),
    },
    ("checked_at_ms", "total", "healthy", "reconnected", "failed", "alerts"),
    closed=False,
)


@operation(
    table.get,
    "/v1/health",
    "The last health sweep",
    access="admin",
    ok=(200, s.json_response(HEALTH)),
)
async def health(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    jobs = app.extras.get("jobs")
    if jobs is not None and jobs.last_health is not None:
        return ok(jobs.last_health)  # the sweep plus never-paired tenants past retention
    # Before the first scheduled sweep, run one so the answer is never empty.
    return ok(app.supervisor.last_health or await app.supervisor.health_sweep())


BACKUP = s.obj(
    {"name": s.STR, "path": s.STR, "size_bytes": s.INT, "created_at_ms": s.INT},
    ("name",),
    closed=False,
)


@operation(
    table.post,
    "/v1/backups",
    "Take an encrypted backup now (needs OXYD_BACKUP_KEY or backup.key_file)",
    access="admin",
    ok=(201, s.json_response(BACKUP)),
    errors=(409,),
)
async def make_backup(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    jobs = app.extras.get("jobs")
    if jobs is None or jobs._make_backup is None:
        raise ApiError(
            409, "backups_not_configured", "no backup key: set OXYD_BACKUP_KEY or backup.key_file"
        )
    path = await jobs.backup_now()
    listing = await asyncio.to_thread(backup.list_backups, app.cfg.data_dir)
    entry = next((b for b in listing if b["name"] == path.name), {"name": path.name})
    return ok({k: (str(v) if k == "path" else v) for k, v in entry.items()}, 201)


@operation(
    table.get,
    "/v1/backups",
    "Encrypted backups in the data directory, newest first",
    access="admin",
    ok=(200, s.json_response(s.obj({"backups": s.array(BACKUP)}, ("backups",), closed=False))),
)
async def list_backups(request: web.Request, inp: Input) -> web.Response:
    app = request.app[APP]
    listing = await asyncio.to_thread(backup.list_backups, app.cfg.data_dir)
    return ok(
        {"backups": [{k: (str(v) if k == "path" else v) for k, v in b.items()} for b in listing]}
    )
