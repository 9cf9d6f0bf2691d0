"""Encrypted online backups of the data directory, and their restore.

Format (version 1): a 28-byte header, then the gzip'd tar cut into 1 MiB chunks, each sealed with
AES-256-GCM (the STREAM construction): nonce = 7-byte random prefix | chunk counter | last flag,
the header as associated data. Truncation, reordering, a flipped byte or a wrong key all fail
authentication, and the archive never has to fit in memory.

Databases are copied with SQLite's backup API in a child process: the device stores are open in
neonize's own copy of SQLite inside the daemon, and a second SQLite library in the same process
would silently drop its POSIX locks on close (sqlite.org/howtocorrupt.html §2.3).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import struct
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from loguru import logger

from oxyd import dirlock
from oxyd.clock import RealClock
from oxyd.datadir import prepare, tenant_folders
from oxyd.media import files as media_files

MAGIC = b"OXYDBAK\0"
VERSION = 1
CHUNK_BYTES = 1 << 20
_HEADER = struct.Struct(">8sB8sI7s")  # magic, version, key id, chunk size, nonce prefix
_TAG_BYTES = 16
SUFFIX = ".oxydbak"
_NAME = re.compile(r"^oxyd-(\d{8}T\d{6})\.(\d{3})Z\.oxydbak$")
_MEMBER = re.compile(r"^(manifest\.json|oxyd\.sqlite3|admin\.token|tenants/[a-z0-9][a-z0-9_-]{0,62}"
                     r"/([A-Za-z0-9][A-Za-z0-9._-]{0,127}"
                     r"|media/[0-9a-f]{2}/[0-9a-f]{64}))$")  # fmt: skip
_SIDE_FILES = ("-wal", "-shm", "-journal")
_SMALL_FILE_BYTES = 16 << 20


class BackupError(Exception):
    """A backup or restore that cannot proceed; the message is meant for the operator."""


# ---- key ----


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


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"oxyd backup key id\0" + key).digest()[:8]


# ---- sealed stream ----


class _SealWriter(io.RawIOBase):
    """Writable file object that encrypts everything written to it into `out`."""

    def __init__(self, out: io.BufferedIOBase, key: bytes, cancel: threading.Event) -> None:
        self._out, self._aead, self._cancel = out, AESGCM(key), cancel
        self._header = _HEADER.pack(MAGIC, VERSION, _key_id(key), CHUNK_BYTES, os.urandom(7))
        self._prefix = self._header[-7:]
        self._buf = bytearray()
        self._counter = 0
        out.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._cancel.is_set():
            raise BackupError("backup cancelled")
        self._buf += data
        while len(self._buf) > CHUNK_BYTES:  # strictly more: the final chunk is never full
            self._seal(bytes(self._buf[:CHUNK_BYTES]), last=False)
            del self._buf[:CHUNK_BYTES]
        return len(data)

    def finish(self) -> None:
        self._seal(bytes(self._buf), last=True)
        self._buf.clear()

    def _seal(self, chunk: bytes, *, last: bool) -> None:
        nonce = self._prefix + struct.pack(">IB", self._counter, last)
        self._out.write(self._aead.encrypt(nonce, chunk, self._header))
        self._counter += 1


class _OpenReader(io.RawIOBase):
    """Readable file object of the authenticated plaintext of an archive."""

    def __init__(self, f: io.BufferedIOBase, key: bytes) -> None:
        self._f = f
        self._header = f.read(_HEADER.size)
        if len(self._header) < _HEADER.size or not self._header.startswith(MAGIC):
            raise BackupError("not an oxyd backup archive")
        _, version, key_id, self._chunk, self._prefix = _HEADER.unpack(self._header)
        if version != VERSION:
            raise BackupError(f"archive format version {version} is not supported by this oxyd")
        if key_id != _key_id(key):
            raise BackupError("wrong backup key: this archive was encrypted with another key")
        if not 1024 <= self._chunk <= 64 << 20:
            raise BackupError("archive header is damaged")
        self._aead = AESGCM(key)
        self._counter = 0
        self._buf = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            self._next_chunk()
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Authenticate the rest, up to the final chunk: tar stops reading before the end."""
        while not self._done:
            self._next_chunk()
            self._buf = b""

    def _next_chunk(self) -> None:
        sealed = self._f.read(self._chunk + _TAG_BYTES)
        last = len(sealed) < self._chunk + _TAG_BYTES
        nonce = self._prefix + struct.pack(">IB", self._counter, last)
        try:
            plain = self._aead.decrypt(nonce, sealed, self._header)
        except InvalidTag:
            raise BackupError(
                "archive failed authentication: it was modified, truncated or damaged"
            ) from None
        self._counter += 1
        self._buf += plain
        self._done = last


# ---- create ----


def backup_dir(data_dir: Path) -> Path:
    return data_dir / "backups"


def _default_name(now_ms: int) -> str:
    t = datetime.fromtimestamp(now_ms / 1000, UTC)
    return f"oxyd-{t:%Y%m%dT%H%M%S}.{now_ms % 1000:03d}Z{SUFFIX}"


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
            if not p.is_file() or p.is_symlink() or p.name.endswith(_SIDE_FILES):
                continue
            if not _MEMBER.match(name):
                logger.warning("backup: skipping {} (unexpected file name)", p)
            elif _is_sqlite(p):
                dbs.append((name, p))
            elif p.stat().st_size <= _SMALL_FILE_BYTES:
                files.append((name, p))
            else:
                logger.warning("backup: skipping {} (large and not a database)", p)
        if media:
            files += [(f"tenants/{tenant}/media/{sha[:2]}/{sha}",
                       media_files.path_of(data_dir, tenant, sha))
                      for sha in sorted(media_files.listing(data_dir, tenant))]  # fmt: skip
    dbs.append(("oxyd.sqlite3", data_dir / "oxyd.sqlite3"))  # last: the most recent messages
    return dbs, files


def snapshot_databases(pairs: list[tuple[str, str]]) -> None:
    """Runs in the child process: a consistent copy of each live database.

    One backup step of all pages holds a single read transaction, so the copy is one snapshot;
    in WAL mode the daemon's writers carry on meanwhile."""
    for src, dst in pairs:
        uri = "file:" + Path(src).absolute().as_posix().replace("?", "%3f") + "?mode=rw"
        source = sqlite3.connect(uri, uri=True, timeout=60)
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            (check,) = target.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"{src} failed its integrity check: {check}")
        finally:
            target.close()
            source.close()


async def _snapshot_in_child(pairs: list[tuple[str, str]]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oxyd.backup",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await proc.communicate(json.dumps(pairs).encode())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
        raise BackupError(f"database snapshot failed: {lines[-1]}")


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
            sealer = _SealWriter(raw, key, cancel)
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
    out = out if out is not None else backup_dir(data_dir) / _default_name(now_ms)
    dbs, files = await asyncio.to_thread(_plan, data_dir, media)
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".oxyd-", dir=data_dir))
    cancel = threading.Event()
    packing = False
    try:
        await _snapshot_in_child([(str(src), str(staging / f"{i}.db")) for i, (_, src) in
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


# ---- restore ----


def _members(tar: tarfile.TarFile):
    """Yield (name, member) for files, refusing anything outside the known layout."""
    seen: set[str] = set()
    for m in tar:
        if m.isdir() and (m.name == "tenants" or _MEMBER.match(m.name + "/x")):
            continue
        if not m.isfile() or not _MEMBER.match(m.name) or m.name in seen:
            raise BackupError(f"archive holds an unexpected entry {m.name!r}: refusing it")
        seen.add(m.name)
        yield m.name, m


def _walk(archive: Path, key: bytes, staging: Path | None) -> dict:
    """Decrypt and authenticate every byte, check every entry, and write the files into
    `staging` (None: write nothing, the verification pass)."""
    manifest = None
    try:
        with archive.open("rb") as f:
            reader = _OpenReader(f, key)
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
            _remove(data_dir / name)
        for suffix in _SIDE_FILES:  # a stale WAL beside a restored database would corrupt it
            _remove(data_dir / f"oxyd.sqlite3{suffix}")
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


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


async def restore_backup(archive: Path, data_dir: Path, key: bytes, *, force: bool = False) -> dict:
    """Restore `archive` into `data_dir` (the daemon must be stopped); returns its manifest."""
    manifest = await asyncio.to_thread(_restore, archive, data_dir, key, force)
    logger.info("restored {} into {} ({} tenants)", archive, data_dir, len(manifest["tenants"]))
    return manifest


# ---- listing ----


def list_backups(data_dir: Path) -> list[dict]:
    """The daemon's own archives in <data_dir>/backups, newest first."""
    out = []
    root = backup_dir(data_dir)
    for p in root.iterdir() if root.is_dir() else ():
        m = _NAME.match(p.name)
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
                    _remove(p)
    if removed:
        logger.info("pruned {} old backup(s), keeping {}", len(removed), keep)
    return removed


# ---- CLI ----


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("backup", help="write an encrypted backup of the data directory")
    p.add_argument("--out", type=Path, help="archive path (default: <data_dir>/backups/...)")
    p.set_defaults(handler=_cli_backup)
    p = subparsers.add_parser("restore", help="restore an encrypted backup (daemon stopped)")
    p.add_argument("archive", type=Path)
    p.add_argument("--data-dir", type=Path, required=True, help="directory to restore into")
    p.add_argument("--force", action="store_true", help="replace a non-empty data directory")
    p.set_defaults(handler=_cli_restore)


def _cli_backup(args: Any, cfg: Any) -> int:
    try:
        key = load_key(cfg)
        out = asyncio.run(create_backup(Path(cfg.data_dir), key, args.out, media=cfg.backup.media))
        if args.out is None:
            prune_backups(Path(cfg.data_dir), cfg.backup.keep)
    except (BackupError, OSError) as e:
        print(f"oxyd backup: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _cli_restore(args: Any, cfg: Any) -> int:
    try:
        key = load_key(cfg)
        m = asyncio.run(restore_backup(args.archive, args.data_dir, key, force=args.force))
    except dirlock.DirectoryInUse as e:
        print(f"oxyd restore: {e}: stop it first", file=sys.stderr)
        return dirlock.EXIT_IN_USE
    except (BackupError, OSError) as e:
        print(f"oxyd restore: {e}", file=sys.stderr)
        return 1
    print(f"restored {len(m['tenants'])} tenant(s) into {args.data_dir}")
    return 0


if __name__ == "__main__":  # the snapshot child of create_backup
    try:
        snapshot_databases([tuple(p) for p in json.load(sys.stdin)])
    except (BackupError, sqlite3.Error, OSError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
