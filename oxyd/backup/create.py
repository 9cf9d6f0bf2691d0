"""Writing an archive: plan the files, snapshot the databases, tar + gzip + seal, move."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger

from oxyd.backup.error import BackupError
from oxyd.backup.layout import MEMBER_RE, SIDE_FILES, backup_dir, default_name
from oxyd.backup.sealed import VERSION, SealWriter
from oxyd.backup.snapshot import snapshot_in_child
from oxyd.clock import RealClock
from oxyd.datadir import tenant_folders
from oxyd.media import files as media_files

_SMALL_FILE_BYTES = 16 << 20


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(16) == b"SQLite format 3\0"


def _plan(
    data_dir: Path, media: bool = False
) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(databases, files) as (archive name, source path); media files (streamed, never read
    whole) only when `media`: they can outweigh everything else by far (backup.media)."""
    if not (data_dir / "oxyd.sqlite3").is_file():
        raise BackupError(f"{data_dir} holds no oxyd.sqlite3: not an oxyd data directory")
    dbs: list[tuple[str, Path]] = []
    files: list[tuple[str, Path]] = []
    if (data_dir / "admin.token").is_file():
        files.append(("admin.token", data_dir / "admin.token"))
    for tenant in tenant_folders(data_dir):
        for p in sorted((data_dir / "tenants" / tenant).iterdir()):
            name = f"tenants/{tenant}/{p.name}"
            if not p.is_file() or p.is_symlink() or p.name.endswith(SIDE_FILES):
                continue
            if not MEMBER_RE.match(name):
                logger.warning("backup: skipping {} (unexpected file name)", p)
            elif _is_sqlite(p):
                dbs.append((name, p))
            elif p.stat().st_size <= _SMALL_FILE_BYTES:
                files.append((name, p))
            else:
                logger.warning("backup: skipping {} (large and not a database)", p)
        if media:
            for sha in sorted(media_files.listing(data_dir, tenant)):
                name = f"tenants/{tenant}/media/{sha[:2]}/{sha}"
                files.append((name, media_files.path_of(data_dir, tenant, sha)))
    dbs.append(("oxyd.sqlite3", data_dir / "oxyd.sqlite3"))  # last: the most recent messages
    return dbs, files


def _read_small(path: Path) -> bytes:
    # A JSON state file may be caught mid-rewrite; a few tries get a whole one.
    for _ in range(5):
        data = path.read_bytes()
        if path.suffix != ".json":
            return data
        try:
            json.loads(data)
            return data
        except ValueError:
            time.sleep(0.05)
    return data


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime_s: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(mtime_s)
    tar.addfile(info, io.BytesIO(data))


def _pack(staging: Path, dbs, files, key: bytes, out: Path, now_ms: int, cancel) -> dict:
    """Tar + gzip + seal into a temp file beside `out`, then move it into place."""
    manifest = {
        "format": VERSION,
        "created_at_ms": now_ms,
        "tenants": sorted({n.split("/")[1] for n, _ in dbs + files if n.startswith("tenants/")}),
        "files": [n for n, _ in dbs + files],
    }
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(prefix=".oxyd-", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            sealer = SealWriter(raw, key, cancel)
            gz = gzip.GzipFile(fileobj=sealer, mode="wb", compresslevel=6, mtime=0)
            with gz, tarfile.open(fileobj=gz, mode="w|") as tar:
                _add_bytes(tar, "manifest.json", json.dumps(manifest).encode(), now_ms / 1000)
                for i, (name, _) in enumerate(dbs):
                    info = tar.gettarinfo(staging / f"{i}.db", arcname=name)
                    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                    with (staging / f"{i}.db").open("rb") as f:
                        tar.addfile(info, f)
                for name, path in files:
                    if "/media/" in name:  # content-addressed, immutable: streamed as is
                        info = tar.gettarinfo(path, arcname=name)
                        info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                        with path.open("rb") as f:
                            tar.addfile(info, f)
                        continue
                    _add_bytes(tar, name, _read_small(path), path.stat().st_mtime)
            sealer.finish()
            raw.flush()
            os.fsync(raw.fileno())
        if out.exists():
            raise BackupError(f"{out} already exists")
        os.replace(tmp, out)
        os.chmod(out, 0o600)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


async def create_backup(
    data_dir: Path, key: bytes, out: Path | None = None, *, clock: Any = None, media: bool = False
) -> Path:
    """An online, consistent, encrypted snapshot of `data_dir`; returns the archive's path.
    With `media` (backup.media), the tenants' media files too."""
    now_ms = (clock or RealClock()).now_ms()
    out = out if out is not None else backup_dir(data_dir) / default_name(now_ms)
    dbs, files = await asyncio.to_thread(_plan, data_dir, media)
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".oxyd-", dir=data_dir))
    cancel = threading.Event()
    packing = False
    try:
        await snapshot_in_child([(str(src), str(staging / f"{i}.db")) for i, (_, src) in
                                  enumerate(dbs)])  # fmt: skip
        packing = True  # from here _pack owns the staging directory and cleans it up
        manifest = await asyncio.to_thread(_pack, staging, dbs, files, key, out, now_ms, cancel)
    except BaseException:
        cancel.set()
        if not packing:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        raise
    logger.info("backup written: {} ({} tenants)", out, len(manifest["tenants"]))
    return out
