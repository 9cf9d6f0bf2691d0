"""The checks `oxyd run` makes before it opens anything, shared with `oxyd check-config`.

The config itself is checked by config.load(); these look at what it points to: token and key
files that must be readable and well-formed, a backup key that must decode. Every problem is
reported at once, each naming its key, and both commands exit 78 (EX_CONFIG) on the same
inputs, so a check-config that passes means run will not stop on its configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from oxyd import backup
from oxyd.config import Config

MIN_TOKEN_CHARS = 16


def problems(cfg: Config, env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    found: list[str] = []
    if not env.get("OXYD_ADMIN_TOKEN") and cfg.http.admin_token_file is not None:
        found += _token_file("http.admin_token_file", cfg.http.admin_token_file)
    if cfg.cluster.enabled and cfg.cluster.token_file is not None:
        found += _token_file("cluster.token_file", cfg.cluster.token_file)
    key_given = bool(env.get("OXYD_BACKUP_KEY")) or cfg.backup.key_file is not None
    if key_given:
        try:
            backup.load_key(cfg, env)
        except backup.BackupError as e:  # names backup.key_file or OXYD_BACKUP_KEY
            found.append(str(e))
    elif cfg.backup.schedule:
        found.append("backup.schedule: needs a backup key (OXYD_BACKUP_KEY or backup.key_file)")
    return found


def _token_file(key: str, path: Path) -> list[str]:
    try:
        token = path.read_text().strip()
    except OSError as e:
        return [f"{key}: {path} cannot be read ({e.strerror})"]
    if len(token) < MIN_TOKEN_CHARS:
        return [f"{key}: {path} holds fewer than {MIN_TOKEN_CHARS} characters"]
    return []
