"""The data directory: its layout, its permissions, and the admin token that lives in it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from oxyd.model import valid_tenant_id

ADMIN_TOKEN_FILE = "admin.token"


def prepare(data_dir: Path) -> None:
    """Create the data directory 0700 (and tighten it if it exists: it holds sessions)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    (data_dir / "tenants").mkdir(exist_ok=True, mode=0o700)


def tenant_dir(data_dir: Path, tenant_id: str) -> Path:
    # Ids are validated at every entry point; this is the last guard before a path is built.
    if not valid_tenant_id(tenant_id):
        raise ValueError(f"invalid tenant id {tenant_id!r}")
    return data_dir / "tenants" / tenant_id


def tenant_folders(data_dir: Path) -> list[str]:
    """Ids of the tenant folders on disk (folders with invalid names are ignored)."""
    root = data_dir / "tenants"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and valid_tenant_id(p.name))


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, without a window where it is wider, and
    atomically (a crash or a concurrent backup sees the old content or the new, never half)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def admin_token(data_dir: Path, env_token: str | None, token_file: Path | None) -> tuple[str, str]:
    """(token, where it came from). Generates <data_dir>/admin.token at first start."""
    if env_token:
        return env_token.strip(), "OXYD_ADMIN_TOKEN"
    if token_file is not None:
        token = token_file.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"http.admin_token_file: {token_file} holds fewer than 16 characters")
        return token, str(token_file)
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, str(path)
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token, f"{path} (generated)"
