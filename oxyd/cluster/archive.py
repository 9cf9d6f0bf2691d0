"""The tenant archive: one tenant, complete, in one uncompressed tar (design §16).

    manifest.json   format, tenant, source node, made_at_ms, and for every member its size
                    and sha256
    rows.sqlite3    the tenant's rows of oxyd.sqlite3 (store.tenant_rows: every table with a
                    `tenant` column: messages, chats, outbox, send queue, tokens, webhooks...)
    files/...       the tenant folder (tenants/<id>/): the device store (copied with SQLite's
                    backup API in a child process), simulator state, media

Cluster moves and `oxyd tenant export/import` use the same format. The importer checks every
member against the manifest and refuses anything else (paths outside files/, links, extra or
missing members), so a damaged or hand-edited archive never lands half-imported.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

from oxyd import datadir
from oxyd.model import valid_tenant_id
from oxyd.store import tenant_rows

FORMAT = "oxyd-tenant-archive/1"
MANIFEST = "manifest.json"
ROWS = "rows.sqlite3"
FILES = "files"
CHUNK = 1 << 20
# SQLite side files are never copied as such: the snapshot holds their committed content.
_SIDE_FILES = ("-wal", "-shm", "-journal")


class ArchiveError(Exception):
    """The archive is damaged or not ours; `code` is the API error code."""

    def __init__(self, message: str, code: str = "invalid_archive") -> None:
        super().__init__(message)
        self.code, self.message = code, message


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


async def build(
    data_dir: Path, db_path: Path, tenant_id: str, out: Path, *, node: int | None = None
) -> dict[str, Any]:
    """Write the tenant's archive to `out`; returns its manifest. The tenant must be stopped
    (its client closed, its queued events committed)."""
    stage = out.with_name(out.name + ".stage")
    await asyncio.to_thread(_fresh_dir, stage)
    try:
        counts = await asyncio.to_thread(tenant_rows.export_rows, db_path, tenant_id, stage / ROWS)
        folder = datadir.tenant_dir(data_dir, tenant_id)
        files = await asyncio.to_thread(_plain_files, folder)
        for rel in files:
            src, dst = folder / rel, stage / FILES / rel
            await asyncio.to_thread(dst.parent.mkdir, parents=True, exist_ok=True)
            if await asyncio.to_thread(_is_sqlite, src):
                await _snapshot(src, dst)
            else:
                await asyncio.to_thread(shutil.copyfile, src, dst)
        manifest = await asyncio.to_thread(_write_tar, stage, out, tenant_id, node, counts)
    finally:
        await asyncio.to_thread(shutil.rmtree, stage, True)
    return manifest


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


def _plain_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            # Dot files are temporaries of atomic writes; SQLite side files are in snapshots.
            if name.startswith(".") or name.endswith(_SIDE_FILES):
                continue
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                out.append(str(path.relative_to(folder)))
    return sorted(out)


async def _snapshot(src: Path, dst: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oxyd.cluster.snapshot",
        str(src),
        str(dst),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise ArchiveError(
            f"snapshot of {src.name} failed: {err.decode(errors='replace').strip()}", "io_error"
        )


def _write_tar(
    stage: Path, out: Path, tenant_id: str, node: int | None, counts: dict[str, int]
) -> dict[str, Any]:
    import time

    members = [ROWS] + [
        str(p.relative_to(stage)) for p in sorted((stage / FILES).rglob("*")) if p.is_file()
    ]
    manifest = {
        "format": FORMAT,
        "tenant": tenant_id,
        "node": node,
        "made_at_ms": int(time.time() * 1000),
        "rows": counts,
        "members": {
            m: {"size": (stage / m).stat().st_size, "sha256": sha256_file(stage / m)}
            for m in members
        },
    }
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    (stage / MANIFEST).write_bytes(raw)
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with (
        os.fdopen(fd, "wb") as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in [MANIFEST, *members]:
            info = tar.gettarinfo(stage / name, arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o600
            with open(stage / name, "rb") as src:
                tar.addfile(info, src)
    # No fsync: an archive is a transient copy, sent and deleted; after a crash it is rebuilt.
    os.replace(tmp, out)
    return manifest


def extract(archive: Path, dest: Path) -> dict[str, Any]:
    """Verify `archive` against its manifest while extracting it into `dest` (created
    fresh); returns the manifest. Raises ArchiveError on anything unexpected."""
    _fresh_dir(dest)
    try:
        tar = tarfile.open(archive, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"not a tenant archive: {e}") from None
    try:
        with tar:
            return _extract(tar, dest)
    except (tarfile.TarError, OSError) as e:  # truncated or unreadable
        raise ArchiveError(f"the archive cannot be read: {e}") from None


def _extract(tar: tarfile.TarFile, dest: Path) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise ArchiveError("not a tenant archive: manifest.json must come first")
    fobj = tar.extractfile(first)
    try:
        manifest = json.loads(fobj.read(1 << 20)) if fobj else None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"not a tenant archive: the manifest's format is not {FORMAT}")
    members = manifest.get("members")
    tenant = manifest.get("tenant")

    if not isinstance(members, dict) or ROWS not in members or not valid_tenant_id(tenant):
        raise ArchiveError("the manifest lacks members, rows or a valid tenant id")
    seen: set[str] = set()
    for info in tar:
        name = info.name
        if info is first:
            continue
        ok_name = name == ROWS or (
            name.startswith(FILES + "/")
            and ".." not in Path(name).parts
            and not Path(name).is_absolute()
        )
        if not info.isfile() or not ok_name or name not in members or name in seen:
            raise ArchiveError(f"unexpected archive member {name!r}")
        want = members[name]
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        h = hashlib.sha256()
        size = 0
        src = tar.extractfile(info)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            while src is not None and (chunk := src.read(CHUNK)):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != want.get("size") or h.hexdigest() != want.get("sha256"):
            raise ArchiveError(f"archive member {name} is damaged (size or sha256 differ)")
        seen.add(name)
    missing = set(members) - seen
    if missing:
        raise ArchiveError(f"archive members missing: {sorted(missing)}")
    return manifest
