"""`python -m oxyd.backup`: the snapshot child of create_backup (see snapshot.py)."""

import json
import sqlite3
import sys

from oxyd.backup.error import BackupError
from oxyd.backup.snapshot import snapshot_databases

if __name__ == "__main__":  # the snapshot child of create_backup
    try:
        snapshot_databases([tuple(p) for p in json.load(sys.stdin)])
    except (BackupError, sqlite3.Error, OSError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
