"""Restoring an archive: verify every byte first, then stage, settle modes, swap in."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from loguru import logger

from oxyd import dirlock
from oxyd.backup.error import BackupError
from oxyd.backup.layout import MEMBER_RE, SIDE_FILES, remove
from oxyd.backup.sealed import CHUNK_BYTES, VERSION, OpenReader
from oxyd.datadir import prepare


def _members(tar: tarfile.TarFile):
    """Yield (name, member) for files, refusing anything outside the known layout."""
    seen: set[str] = set()
    for m in tar:
        if m.isdir() and (m.name == "tenants" or MEMBER_RE.match(m.name + "/x")):
            continue
        if not m.isfile() or not MEMBER_RE.match(m.name) or m.name in seen:
            raise BackupError(f"archive holds an unexpected entry {m.name!r}: refusing it")
        seen.add(m.name)
        yield m.name, m


def _walk(archive: Path, key: bytes, staging: Path | None) -> dict:
    """Decrypt and authenticate every byte, check every entry, and write the files into
    `staging` (None: write nothing, the verification pass)."""
    manifest = None
    try:
        with archive.open("rb") as f:
            reader = OpenReader(f, key)
            gz = gzip.GzipFile(fileobj=reader, mode="rb")
            with gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                for name, m in _members(tar):
                    src = tar.extractfile(m)
                    if name == "manifest.json":
                        manifest = json.loads(src.read())
                    elif staging is not None:
                        dest = staging / name
                        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                        with os.fdopen(fd, "wb") as out:
                            shutil.copyfileobj(src, out)
                    while src.read(CHUNK_BYTES):
                        pass
            reader.drain()
    except (tarfile.TarError, EOFError, ValueError, gzip.BadGzipFile) as e:
        raise BackupError(f"archive is damaged: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != VERSION:
        raise BackupError("archive has no valid manifest")
    return manifest


def _is_empty(data_dir: Path) -> bool:
    if not data_dir.exists():
        return True
    for p in data_dir.iterdir():
        # A surviving backups/ folder (where the archive often lives) does not count.
        if p.name == "backups" and p.is_dir():
            continue
        if p.name == dirlock.LOCK_FILE:  # ours: restore holds it while it works
            continue
        if p.name == "tenants" and p.is_dir() and not any(p.iterdir()):
            continue
        return False
    return True


def _restore(archive: Path, data_dir: Path, key: bytes, force: bool) -> dict:
    # A daemon on this directory would keep writing into the files replaced below, and its
    # acknowledged messages would vanish at the next start: refuse while anyone holds it.
    manifest = _walk(archive, key, None)  # nothing is written unless this passes
    with dirlock.acquire(data_dir):
        _restore_locked(archive, data_dir, key, force)
    return manifest


def _restore_locked(archive: Path, data_dir: Path, key: bytes, force: bool) -> None:
    if not force and not _is_empty(data_dir):
        raise BackupError(f"{data_dir} is not empty: use --force to replace its contents")
    # Staged inside the data directory: it may be a mount point (a container volume) whose
    # parent is neither writable nor on the same filesystem.
    prepare(data_dir)
    st = data_dir.stat()
    if os.geteuid() == 0 and st.st_uid != 0:  # sudo oxyd restore: the service must open it
        os.chown(data_dir / dirlock.LOCK_FILE, st.st_uid, st.st_gid)
    staging = Path(tempfile.mkdtemp(prefix=".oxyd-restore-", dir=data_dir))
    try:
        _walk(archive, key, staging)  # authenticated again: the file may have changed since
        (staging / "tenants").mkdir(exist_ok=True, mode=0o700)
        _settle(staging, data_dir)
        for name in ("oxyd.sqlite3", "admin.token", "tenants"):
            remove(data_dir / name)
        for suffix in SIDE_FILES:  # a stale WAL beside a restored database would corrupt it
            remove(data_dir / f"oxyd.sqlite3{suffix}")
        for p in staging.iterdir():
            os.replace(p, data_dir / p.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _settle(root: Path, data_dir: Path) -> None:
    """Modes 0700/0600; run as root (sudo oxyd restore), hand the files to the service user
    who owns the data directory."""
    st = data_dir.stat()
    chown = os.geteuid() == 0 and st.st_uid != 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            os.chmod(path, 0o600 if name in filenames else 0o700)
            if chown:
                os.chown(path, st.st_uid, st.st_gid)


async def restore_backup(archive: Path, data_dir: Path, key: bytes, *, force: bool = False) -> dict:
    """Restore `archive` into `data_dir` (the daemon must be stopped); returns its manifest."""
    manifest = await asyncio.to_thread(_restore, archive, data_dir, key, force)
    logger.info("restored {} into {} ({} tenants)", archive, data_dir, len(manifest["tenants"]))
    return manifest
