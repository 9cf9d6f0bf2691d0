"""Taking a tenant out of this node's supervisor and putting one in: the steps a move, an
export and an import share. Only this module reaches into the supervisor's runners.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from oxyd import datadir
from oxyd import model as m
from oxyd.app import App
from oxyd.cluster import archive
from oxyd.model import IDLE, State
from oxyd.store import tenant_rows
from oxyd.supervision.runner import Runner

WORK_DIR = "cluster"  # <data_dir>/cluster/: archives in flight (never a tenant id: no dash rule)


def work_dir(app: App, *parts: str) -> Path:
    return app.cfg.data_dir.joinpath(WORK_DIR, *parts)


async def detach(app: App, tenant_id: str) -> Runner:
    """Stop the tenant gracefully and take it out of the supervisor: its client is closed,
    every event it delivered is committed, nothing of it runs here any more. Returns the
    runner so a failed move can put the very same one back (a neonize client object must
    live as long as its tenant: a second one with the same uuid kills the first)."""
    sup = app.supervisor
    r = sup.runner(tenant_id)
    async with r.lock:
        await r.cancel()
        await r._stop_client()
        data = [
            e for e in r.events if isinstance(e, m.Message | m.Receipt | m.HistorySync | m.Contact)
        ]
        while data:
            taken = app.writer.offer(tenant_id, data)
            data = data[taken:]
            if data:
                await app.writer.wait_room()
        r.events.clear()
        await app.writer.flush()
        sup.runners.pop(tenant_id, None)
        sup.subs.remove_tenant(tenant_id)
    sup.publish({"type": "removed", "tenant": tenant_id})
    return r


async def attach(app: App, tenant_id: str, runner: Runner | None = None) -> dict[str, Any]:
    """Put a tenant whose rows are in oxyd.sqlite3 under supervision and restore it as the
    daemon does at start (parked and stopped tenants stay so)."""
    sup = app.supervisor
    t = await app.store.tenant(tenant_id)
    if t is None:
        raise LookupError(f"no tenant {tenant_id!r}")
    hooks = await app.store.webhooks()
    if tenant_id in hooks:
        sup.subs.set_tenant(tenant_id, hooks[tenant_id]["events"])
    if t.state not in IDLE and t.state is not State.BANNED:
        t.state, t.state_since_ms = State.CONNECTING, app.clock.now_ms()
    if runner is not None:
        runner.t = t
        r = runner
    else:
        r = Runner(sup, t)
    sup.runners[tenant_id] = r
    r.spawn("restore")
    await app.webhooks.webhook_changed(tenant_id)
    app.webhooks.kick()
    data = sup.tenant_json(r)
    sup.publish({"type": "state", "tenant": tenant_id, "data": data})
    return data


async def export(app: App, tenant_id: str, out: Path, node: int | None) -> dict[str, Any]:
    """The archive of a detached tenant."""
    await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
    return await archive.build(app.cfg.data_dir, app.store.path, tenant_id, out, node=node)


async def import_archive(
    app: App, tenant_id: str, path: Path, extra: list[tuple[str, tuple]] | None = None
) -> dict[str, Any]:
    """Verify and import an archive of `tenant_id`, then start the tenant. Raises
    archive.ArchiveError or tenant_rows.ImportRefused (nothing imported then)."""
    stage = work_dir(app, "in", tenant_id)
    await asyncio.to_thread(stage.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
    try:
        manifest = await asyncio.to_thread(archive.extract, path, stage)
        if manifest["tenant"] != tenant_id:
            raise archive.ArchiveError(
                f"the archive holds tenant {manifest['tenant']!r}, not {tenant_id!r}",
                "archive_mismatch",
            )
        if tenant_id in app.supervisor.runners:
            raise tenant_rows.ImportRefused("tenant_exists", f"tenant {tenant_id!r} exists")
        folder = datadir.tenant_dir(app.cfg.data_dir, tenant_id)
        # A folder without a row would be adopted at the next start: it must not exist yet.
        await asyncio.to_thread(shutil.rmtree, folder, True)
        await asyncio.to_thread(
            tenant_rows.import_rows,
            app.store.path,
            tenant_id,
            stage / archive.ROWS,
            extra or [],
        )
        await asyncio.to_thread(place_files, stage, folder)
    finally:
        await asyncio.to_thread(shutil.rmtree, stage, True)
    return await attach(app, tenant_id)


def place_files(stage: Path, folder: Path) -> None:
    files = stage / archive.FILES
    if not files.is_dir():
        files.mkdir(mode=0o700)
    os.chmod(files, 0o700)
    os.replace(files, folder)


async def drop(app: App, tenant_id: str, extra: list[tuple[str, tuple]] | None = None) -> None:
    """Delete a detached tenant's rows and folder (after its new owner confirmed)."""
    await asyncio.to_thread(tenant_rows.delete_rows, app.store.path, tenant_id, extra or [])
    await asyncio.to_thread(shutil.rmtree, datadir.tenant_dir(app.cfg.data_dir, tenant_id), True)
