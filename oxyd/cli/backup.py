"""`oxyd backup` and `oxyd restore`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from loguru import logger

from oxyd import dirlock
from oxyd.backup import (
    BackupError,
    create_backup,
    load_key,
    prune_backups,
    restore_backup,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("backup", help="write an encrypted backup of the data directory")
    p.add_argument("--out", type=Path, help="archive path (default: <data_dir>/backups/...)")
    # Logged in the daemon's format (cli.main sets it up): one log for both.
    p.set_defaults(handler=_cli_backup, daemon_logging=True)
    p = subparsers.add_parser("restore", help="restore an encrypted backup (daemon stopped)")
    p.add_argument("archive", type=Path)
    p.add_argument("--data-dir", type=Path, required=True, help="directory to restore into")
    p.add_argument("--force", action="store_true", help="replace a non-empty data directory")
    p.set_defaults(handler=_cli_restore, daemon_logging=True)


def _cli_backup(args: Any, cfg: Any) -> int:
    try:
        key = load_key(cfg)
        # create_backup logs the archive's path and tenant count: that is the answer.
        asyncio.run(create_backup(Path(cfg.data_dir), key, args.out, media=cfg.backup.media))
        if args.out is None:
            prune_backups(Path(cfg.data_dir), cfg.backup.keep)
    except (BackupError, OSError) as e:
        logger.error("backup failed: {}", e)
        return 1
    return 0


def _cli_restore(args: Any, cfg: Any) -> int:
    try:
        key = load_key(cfg)
        # restore_backup logs what it restored, where, and how many tenants.
        asyncio.run(restore_backup(args.archive, args.data_dir, key, force=args.force))
    except dirlock.DirectoryInUse as e:
        logger.error("restore refused: {}: stop it first", e)
        return dirlock.EXIT_IN_USE
    except (BackupError, OSError) as e:
        logger.error("restore failed: {}", e)
        return 1
    return 0
