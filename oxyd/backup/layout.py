"""Where archives live (<data_dir>/backups), what they may hold, listing and pruning."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

SUFFIX = ".oxydbak"
NAME_RE = re.compile(r"^oxyd-(\d{8}T\d{6})\.(\d{3})Z\.oxydbak$")
MEMBER_RE = re.compile(
    r"^(manifest\.json|oxyd\.sqlite3|admin\.token"
    r"|tenants/[a-z0-9][a-z0-9_-]{0,62}"
    r"/([A-Za-z0-9][A-Za-z0-9._-]{0,127}|media/[0-9a-f]{2}/[0-9a-f]{64}))$"
)
SIDE_FILES = ("-wal", "-shm", "-journal")


def backup_dir(data_dir: Path) -> Path:
    return data_dir / "backups"


def default_name(now_ms: int) -> str:
    t = datetime.fromtimestamp(now_ms / 1000, UTC)
    return f"oxyd-{t:%Y%m%dT%H%M%S}.{now_ms % 1000:03d}Z{SUFFIX}"


def list_backups(data_dir: Path) -> list[dict]:
    """The daemon's own archives in <data_dir>/backups, newest first."""
    out = []
    root = backup_dir(data_dir)
    for p in root.iterdir() if root.is_dir() else ():
        m = NAME_RE.match(p.name)
        if m is None or not p.is_file():
            continue
        t = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        created_ms = int(t.timestamp()) * 1000 + int(m.group(2))
        out.append({"name": p.name, "path": str(p), "size_bytes": p.stat().st_size,
                    "created_at_ms": created_ms})  # fmt: skip
    return sorted(out, key=lambda b: b["name"], reverse=True)


def prune_backups(data_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` archives (and temp files of crashed runs)."""
    removed = [Path(b["path"]) for b in list_backups(data_dir)[max(keep, 0) :]]
    for p in removed:
        p.unlink(missing_ok=True)
    stale_before_s = time.time() - 6 * 3600
    for root in (backup_dir(data_dir), data_dir):
        for p in root.glob(".oxyd-*") if root.is_dir() else ():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < stale_before_s and not p.name.startswith(".oxyd-restore"):
                    remove(p)
    if removed:
        logger.info("pruned {} old backup(s), keeping {}", len(removed), keep)
    return removed


def remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)
