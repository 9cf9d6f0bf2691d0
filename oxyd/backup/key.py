"""The backup key: 32 bytes in url-safe base64, from the environment or a file."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oxyd.backup.error import BackupError


def load_key(cfg: Any, env: Mapping[str, str] | None = None) -> bytes:
    """The 32-byte key from $OXYD_BACKUP_KEY, else from the file named by backup.key_file."""
    env = os.environ if env is None else env
    if env.get("OXYD_BACKUP_KEY"):
        text, source = env["OXYD_BACKUP_KEY"], "OXYD_BACKUP_KEY"
    elif cfg.backup.key_file is not None:
        source = f"backup.key_file ({cfg.backup.key_file})"
        try:
            text = Path(cfg.backup.key_file).read_text()
        except OSError as e:
            raise BackupError(f"{source}: cannot be read ({e.strerror})") from None
    else:
        raise BackupError(
            "no backup key: set OXYD_BACKUP_KEY or backup.key_file to 32 random bytes in"
            " url-safe base64 (see the operations guide)"
        )
    text = "".join(text.split())
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        # Never echo the value: it is a secret even when malformed.
        raise BackupError(f"{source}: not 32 bytes in url-safe base64")
    return key


def key_id(key: bytes) -> bytes:
    """Stored in each archive's header: a wrong key is named as such, not as damage."""
    return hashlib.sha256(b"oxyd backup key id\0" + key).digest()[:8]
