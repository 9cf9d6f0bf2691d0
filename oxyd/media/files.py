"""The per-tenant content-addressed media store on disk.

`tenants/<id>/media/<sha256[:2]>/<sha256>` (0600), one file per distinct content. Downloads
land in `media/.partial/` first and are moved into place only once complete and verified, so
a crash (even SIGKILL) never leaves a partial file where a reader can see it; whatever is left
in `.partial/` at start is deleted.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from oxyd import datadir

MEDIA_DIR = "media"
PARTIAL_DIR = ".partial"
SHA256_RE = re.compile(r"[0-9a-f]{64}")


def root(data_dir: Path, tenant_id: str) -> Path:
    return datadir.tenant_dir(data_dir, tenant_id) / MEDIA_DIR


def path_of(data_dir: Path, tenant_id: str, sha256: str) -> Path:
    if not SHA256_RE.fullmatch(sha256):
        raise ValueError("not a sha256 hex digest")
    return root(data_dir, tenant_id) / sha256[:2] / sha256


def partial_name(data_dir: Path, tenant_id: str) -> Path:
    return root(data_dir, tenant_id) / PARTIAL_DIR / f"{secrets.token_hex(8)}.part"


def new_partial(data_dir: Path, tenant_id: str) -> Path:
    """A fresh name in the tenant's partial folder (created here)."""
    path = partial_name(data_dir, tenant_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def commit(
    partial: Path, final: Path, size: int, room_bytes: int | None = None, fsync: bool = True
) -> str:
    """Move a complete, verified download into place. Returns "exists" when the content was
    there already (identical files are stored once: the partial is dropped), "no_room" when
    it is new and larger than `room_bytes` (the quota left; the partial stays for the caller
    to delete), else "new"."""
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if final.exists():
        partial.unlink(missing_ok=True)
        return "exists"
    if room_bytes is not None and size > room_bytes:
        return "no_room"
    os.chmod(partial, 0o600)
    if fsync:  # the bytes reach the disk before any row can say "stored" (media.fsync)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(partial, final)
    return "new"


def keep(
    data_dir: Path,
    tenant_id: str,
    data: bytes,
    sha256: str,
    room_bytes: int | None = None,
    fsync: bool = True,
) -> str:
    """Store bytes in hand (media oxyd sent) like a download: written to a partial file,
    then `commit` (same outcomes)."""
    final = path_of(data_dir, tenant_id, sha256)
    if final.exists():
        return "exists"
    partial = new_partial(data_dir, tenant_id)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return commit(partial, final, len(data), room_bytes, fsync)
    finally:
        partial.unlink(missing_ok=True)  # gone already unless it was not committed


def exists(data_dir: Path, tenant_id: str, sha256: str) -> bool:
    return path_of(data_dir, tenant_id, sha256).is_file()


def clear_partials(data_dir: Path) -> tuple[int, list[str]]:
    """Delete what interrupted downloads left behind, in every tenant. Returns the count and
    the tenants whose folder could not be read (one damaged folder never stops the rest)."""
    n, unreadable = 0, []
    for tenant_id in datadir.tenant_folders(data_dir):
        folder = root(data_dir, tenant_id) / PARTIAL_DIR
        try:
            if folder.is_dir():
                n += sum(1 for _ in folder.iterdir())
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            # One unreadable tenant folder must not stop the daemon: that tenant is parked
            # by its runner with the reason; the others start.
            unreadable.append(tenant_id)
    return n, unreadable


def listing(data_dir: Path, tenant_id: str) -> dict[str, int]:
    """sha256 -> size of every stored file of a tenant."""
    out: dict[str, int] = {}
    base = root(data_dir, tenant_id)
    if not base.is_dir():
        return out
    for sub in base.iterdir():
        if len(sub.name) != 2 or not sub.is_dir():
            continue
        for f in sub.iterdir():
            if SHA256_RE.fullmatch(f.name) and f.is_file():
                out[f.name] = f.stat().st_size
    return out


def delete(data_dir: Path, tenant_id: str, sha256: str) -> None:
    path_of(data_dir, tenant_id, sha256).unlink(missing_ok=True)
