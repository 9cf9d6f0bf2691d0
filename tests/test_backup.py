"""Encrypted backups on real data directories: round trip under load, tampering, pruning, CLI."""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import json
import os
import sqlite3
import stat
import tarfile
import threading
from pathlib import Path

import pytest

from oxyd import backup
from oxyd.backup import BackupError, create_backup, list_backups, prune_backups, restore_backup
from oxyd.backup.sealed import SealWriter
from oxyd.cli import backup as cli_backup
from oxyd.clock import FakeClock
from oxyd.config import load as load_config
from oxyd.datadir import prepare
from oxyd.model import Tenant
from oxyd.store.db import Store

KEY = os.urandom(32)
KEY_B64 = base64.urlsafe_b64encode(KEY).decode()


def sqlite_wal(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


async def make_data_dir(root: Path, *, blob_bytes: int = 0) -> Path:
    data = root / "data"
    prepare(data)
    store = await Store.open(data)
    await store.add_tenant(Tenant(id="alice", engine="neonize", created_at_ms=1))
    await store.add_tenant(Tenant(id="sim-1", engine="simulator", created_at_ms=2))
    await store.close()
    (data / "admin.token").write_text("admin-token-0123456789\n")
    (data / "tenants" / "alice").mkdir(parents=True)
    dev = sqlite_wal(data / "tenants" / "alice" / "whatsmeow.sqlite3")
    dev.execute("CREATE TABLE device (jid TEXT, identity BLOB)")
    dev.execute("INSERT INTO device VALUES ('123@s.whatsapp.net', ?)", (os.urandom(blob_bytes),))
    dev.close()
    (data / "tenants" / "sim-1").mkdir()
    (data / "tenants" / "sim-1" / "simulator.json").write_text('{"paired": true}')
    return data


def tree(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(root.rglob("*"))
    }


async def test_round_trip_restores_exact_state(tmp_path):
    data = await make_data_dir(tmp_path)
    clock = FakeClock(start_ms=1_700_000_000_123)
    archive = await create_backup(data, KEY, clock=clock)
    assert archive.parent == data / "backups"
    assert archive.name == "oxyd-20231114T221320.123Z.oxydbak"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert b"admin-token" not in archive.read_bytes()
    assert not [p for p in data.iterdir() if p.name.startswith(".oxyd-")]

    target = tmp_path / "restored"
    manifest = await restore_backup(archive, target, KEY)
    assert manifest["tenants"] == ["alice", "sim-1"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert (target / "admin.token").read_text() == "admin-token-0123456789\n"
    assert (target / "tenants/sim-1/simulator.json").read_text() == '{"paired": true}'
    for p in target.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    dev = sqlite3.connect(target / "tenants/alice/whatsmeow.sqlite3")
    assert dev.execute("SELECT jid FROM device").fetchall() == [("123@s.whatsapp.net",)]
    dev.close()
    store = await Store.open(target)
    assert [t.id for t in await store.tenants()] == ["alice", "sim-1"]
    await store.close()


async def test_backup_of_live_wal_databases_is_consistent(tmp_path):
    """A writer commits continuously (10 rows + a running total per transaction) while the
    backup runs: the snapshot must be one committed state, never a torn one."""
    data = await make_data_dir(tmp_path)
    db = sqlite_wal(data / "oxyd.sqlite3")
    db.execute("CREATE TABLE load_rows (n INTEGER, pad BLOB)")
    db.execute("CREATE TABLE load_total (total INTEGER)")
    db.execute("INSERT INTO load_total VALUES (0)")
    dev = sqlite_wal(data / "tenants/alice/whatsmeow.sqlite3")
    stop = threading.Event()
    committed = [0]

    def writer() -> None:
        while not stop.is_set():
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO load_rows VALUES (?, ?)", [(i, os.urandom(512)) for i in range(10)]
            )
            db.execute("UPDATE load_total SET total = total + 10")
            db.execute("COMMIT")
            dev.execute("INSERT INTO device VALUES ('x', NULL)")
            committed[0] += 10

    t = threading.Thread(target=writer)
    t.start()
    try:
        while committed[0] < 2000:  # the writer is well under way before the backup starts
            await _yield()
        archive = await create_backup(data, KEY)
        during = committed[0]
    finally:
        stop.set()
        t.join()
    db.close()
    dev.close()
    target = tmp_path / "restored"
    await restore_backup(archive, target, KEY)
    snap = sqlite3.connect(target / "oxyd.sqlite3")
    assert snap.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (rows,) = snap.execute("SELECT count(*) FROM load_rows").fetchone()
    (total,) = snap.execute("SELECT total FROM load_total").fetchone()
    snap.close()
    assert rows == total
    assert 2000 <= rows <= during
    snap = sqlite3.connect(target / "tenants/alice/whatsmeow.sqlite3")
    assert snap.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    snap.close()
    assert not (target / "oxyd.sqlite3-wal").exists()


async def _yield() -> None:
    await asyncio.sleep(0.001)


@pytest.fixture
async def big_archive(tmp_path) -> tuple[Path, Path]:
    # Incompressible 3 MiB: several 1 MiB chunks, so truncation at a chunk edge is tested.
    data = await make_data_dir(tmp_path, blob_bytes=3 << 20)
    return data, await create_backup(data, KEY)


def assert_nothing_written(tmp_path: Path, before: dict[str, bytes], target: Path) -> None:
    assert tree(tmp_path) == before
    assert not target.exists()


async def test_wrong_key_writes_nothing(tmp_path, big_archive):
    _, archive = big_archive
    target = tmp_path / "restored"
    before = tree(tmp_path)
    with pytest.raises(BackupError, match="wrong backup key"):
        await restore_backup(archive, target, os.urandom(32))
    assert_nothing_written(tmp_path, before, target)


@pytest.mark.parametrize("where", ["header", "first", "middle", "last", "truncate", "chunk-edge"])
async def test_tampered_archive_writes_nothing(tmp_path, big_archive, where):
    _, archive = big_archive
    blob = bytearray(archive.read_bytes())
    size = len(blob)
    if where == "truncate":
        blob = blob[:-1]
    elif where == "chunk-edge":
        # Drop whole trailing chunks: every remaining chunk is intact and authentic.
        blob = blob[: 28 + 2 * ((1 << 20) + 16)]
    else:
        pos = {"header": 20, "first": 40, "middle": size // 2, "last": size - 1}[where]
        blob[pos] ^= 0x01
    archive.write_bytes(bytes(blob))
    target = tmp_path / "restored"
    before = tree(tmp_path)
    with pytest.raises(BackupError) as e:
        await restore_backup(archive, target, KEY)
    assert "modified" in str(e.value) or "damaged" in str(e.value) or "key" in str(e.value)
    assert_nothing_written(tmp_path, before, target)


async def test_not_an_archive(tmp_path):
    p = tmp_path / "x.oxydbak"
    p.write_bytes(b"hello")
    with pytest.raises(BackupError, match="not an oxyd backup"):
        await restore_backup(p, tmp_path / "restored", KEY)


def sealed_tar(path: Path, members: list[tarfile.TarInfo], key: bytes = KEY) -> Path:
    with path.open("wb") as raw:
        sealer = SealWriter(raw, key, threading.Event())
        with (
            gzip.GzipFile(fileobj=sealer, mode="wb") as gz,
            tarfile.open(fileobj=gz, mode="w|") as tar,
        ):
            manifest = json.dumps({"format": 1, "tenants": [], "files": []}).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(manifest)
            tar.addfile(info, io.BytesIO(manifest))
            for m in members:
                tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
        sealer.finish()
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _file("../evil"),
        _file("/etc/evil"),
        _file("tenants/../../evil"),
        _file("tenants/a/../../../evil"),
        _file("tenants/Bad/whatsmeow.sqlite3"),
        _file("other.txt"),
        _link("tenants/a/whatsmeow.sqlite3", "/etc/passwd", tarfile.SYMTYPE),
        _link("admin.token", "/etc/shadow", tarfile.LNKTYPE),
    ],
    ids=lambda m: m.name,
)
async def test_path_traversal_and_links_are_refused(tmp_path, member):
    archive = sealed_tar(tmp_path / "evil.oxydbak", [member])
    target = tmp_path / "restored"
    before = tree(tmp_path)
    with pytest.raises(BackupError, match="unexpected entry"):
        await restore_backup(archive, target, KEY)
    assert_nothing_written(tmp_path, before, target)


async def test_non_empty_data_dir_needs_force(tmp_path):
    data = await make_data_dir(tmp_path)
    archive = await create_backup(data, KEY)
    other = await make_data_dir(tmp_path / "other")
    (other / "oxyd.sqlite3-wal").write_bytes(b"stale wal")
    (other / "tenants" / "stale").mkdir()
    with pytest.raises(BackupError, match="not empty"):
        await restore_backup(archive, other, KEY)
    assert (other / "tenants" / "stale").exists()
    await restore_backup(archive, other, KEY, force=True)
    assert not (other / "oxyd.sqlite3-wal").exists()
    assert sorted(p.name for p in (other / "tenants").iterdir()) == ["alice", "sim-1"]
    # A data directory holding only its backups counts as empty: restore in place.
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "backups").mkdir()
    os.replace(archive, tmp_path / "lost" / "backups" / archive.name)
    await restore_backup(tmp_path / "lost" / "backups" / archive.name, tmp_path / "lost", KEY)
    assert (tmp_path / "lost" / "oxyd.sqlite3").exists()


async def test_refuses_a_directory_that_is_not_a_data_dir(tmp_path):
    with pytest.raises(BackupError, match="not an oxyd data directory"):
        await create_backup(tmp_path, KEY)


async def test_list_and_prune_keep_the_newest(tmp_path):
    data = await make_data_dir(tmp_path)
    clock = FakeClock(start_ms=1_700_000_000_000)
    made = []
    for _ in range(4):
        made.append(await create_backup(data, KEY, clock=clock))
        await clock.advance(3600)
    (data / "backups" / "mine.oxydbak").write_bytes(b"operator's own file")
    listed = list_backups(data)
    assert [b["name"] for b in listed] == [p.name for p in reversed(made)]
    assert listed[0]["created_at_ms"] == 1_700_000_000_000 + 3 * 3600 * 1000
    assert listed[0]["size_bytes"] == made[-1].stat().st_size
    assert prune_backups(data, 2) == [made[1], made[0]]
    assert [b["name"] for b in list_backups(data)] == [made[3].name, made[2].name]
    assert (data / "backups" / "mine.oxydbak").exists()
    assert list_backups(tmp_path / "nowhere") == []


def test_load_key(tmp_path):
    cfg = load_config(env={})
    assert backup.load_key(cfg, env={"OXYD_BACKUP_KEY": KEY_B64}) == KEY
    assert backup.load_key(cfg, env={"OXYD_BACKUP_KEY": KEY_B64.rstrip("=")}) == KEY
    keyfile = tmp_path / "backup.key"
    keyfile.write_text(KEY_B64 + "\n")
    cfg_file = load_config(env={"OXYD_BACKUP_KEY_FILE": str(keyfile)})
    assert backup.load_key(cfg_file, env={}) == KEY
    with pytest.raises(BackupError, match="no backup key"):
        backup.load_key(cfg, env={})
    bad = base64.urlsafe_b64encode(b"secret-but-short").decode()
    with pytest.raises(BackupError, match="not 32 bytes") as e:
        backup.load_key(cfg, env={"OXYD_BACKUP_KEY": bad})
    assert bad not in str(e.value)
    with pytest.raises(BackupError, match="not 32 bytes"):
        backup.load_key(cfg, env={"OXYD_BACKUP_KEY": "!!!not base64!!!"})
    missing = load_config(env={"OXYD_BACKUP_KEY_FILE": str(tmp_path / "nope")})
    with pytest.raises(BackupError, match="cannot be read"):
        backup.load_key(missing, env={})


def run_cli(argv: list[str], env: dict[str, str]) -> int:
    parser = argparse.ArgumentParser()
    cli_backup.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args, load_config(env=env))


async def test_cli_backup_and_restore(tmp_path, monkeypatch, capsys):
    data = await make_data_dir(tmp_path)
    env = {"OXYD_DATA_DIR": str(data), "OXYD_BACKUP_KEEP": "1"}

    def cli(argv: list[str]) -> int:
        return run_cli(argv, env)

    monkeypatch.delenv("OXYD_BACKUP_KEY", raising=False)
    assert await asyncio.to_thread(cli, ["backup"]) == 1
    assert "no backup key" in capsys.readouterr().out  # the log (tests print it to stdout)
    monkeypatch.setenv("OXYD_BACKUP_KEY", KEY_B64)
    assert await asyncio.to_thread(cli, ["backup"]) == 0
    logged = capsys.readouterr().out
    (out,) = (data / "backups").glob("*.oxydbak")
    assert logged.count(str(out)) == 1  # each fact once: the log line names the archive
    target = tmp_path / "restored"
    assert await asyncio.to_thread(cli, ["restore", str(out), "--data-dir", str(target)]) == 0
    assert "(2 tenants)" in capsys.readouterr().out
    assert await asyncio.to_thread(cli, ["restore", str(out), "--data-dir", str(target)]) == 1
    logged = capsys.readouterr().out
    assert "restore failed: " in logged and "--force" in logged and logged.count("\n") == 1
    argv = ["restore", str(out), "--data-dir", str(target), "--force"]
    assert await asyncio.to_thread(cli, argv) == 0
    explicit = tmp_path / "elsewhere.oxydbak"
    assert await asyncio.to_thread(cli, ["backup", "--out", str(explicit)]) == 0
    assert explicit.exists()
    monkeypatch.setenv("OXYD_BACKUP_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
    assert await asyncio.to_thread(cli, argv) == 1
    assert "wrong backup key" in capsys.readouterr().out


async def test_media_files_only_with_backup_media(tmp_path):
    import hashlib

    from oxyd.media import files as media_files

    data = await make_data_dir(tmp_path)
    blob = os.urandom(200_000)
    sha = hashlib.sha256(blob).hexdigest()
    path = media_files.path_of(data, "alice", sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    partial = media_files.new_partial(data, "alice")
    partial.write_bytes(b"half a download")

    without = await create_backup(data, KEY, tmp_path / "plain.oxydbak")
    restored = tmp_path / "r1"
    manifest = await restore_backup(without, restored, KEY)
    assert not any("/media/" in n for n in manifest["files"])
    assert not (restored / "tenants" / "alice" / "media").exists()

    with_media = await create_backup(data, KEY, tmp_path / "media.oxydbak", media=True)
    restored = tmp_path / "r2"
    manifest = await restore_backup(with_media, restored, KEY)
    assert f"tenants/alice/media/{sha[:2]}/{sha}" in manifest["files"]
    assert media_files.path_of(restored, "alice", sha).read_bytes() == blob
    assert not (restored / "tenants" / "alice" / "media" / ".partial").exists()
