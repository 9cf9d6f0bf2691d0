"""Encrypted online backups of the data directory, and their restore.

Format (version 1): a 28-byte header, then the gzip'd tar cut into 1 MiB chunks, each sealed with
AES-256-GCM (the STREAM construction): nonce = 7-byte random prefix | chunk counter | last flag,
the header as associated data. Truncation, reordering, a flipped byte or a wrong key all fail
authentication, and the archive never has to fit in memory.

Modules: key (the key), sealed (the encrypted stream), layout (where archives live),
snapshot (database copies in a child process), create and restore.
"""

from oxyd.backup.create import create_backup
from oxyd.backup.error import BackupError
from oxyd.backup.key import load_key
from oxyd.backup.layout import backup_dir, list_backups, prune_backups
from oxyd.backup.restore import restore_backup

__all__ = [
    "BackupError",
    "backup_dir",
    "create_backup",
    "list_backups",
    "load_key",
    "prune_backups",
    "restore_backup",
]
