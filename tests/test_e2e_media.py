"""Incoming media through the real `oxyd run` process: bytes served equal bytes sent, a
restart keeps serving, and a SIGKILL in the middle of a download leaves no partial file where
it could be served; the download resumes at the next start."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from typing import Any

import pytest
from helpers import sync_until
from test_e2e_run import TOKEN, Daemon

pytestmark = pytest.mark.e2e


def fetch(d: Daemon, path: str, headers: dict | None = None) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{d.port}{path}",
        headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def media_of(d: Daemon, tid: str, wa_id: str) -> dict | None:
    code, body = d.get(f"/v1/tenants/{tid}/messages")
    if code != 200:
        return None
    for m in body["messages"]:
        if m["id"] == wa_id:
            return m["media"]
    return None


def settled(d: Daemon, tid: str, wa_id: str, timeout_s: float = 60) -> dict:
    out: dict = {}

    def done() -> bool:
        media = media_of(d, tid, wa_id)
        if media and media["status"] != "pending":
            out.update(media)
            return True
        return False

    sync_until(done, timeout_s, f"media of {wa_id} settled")
    return out


def add_tenant(d: Daemon, tid: str) -> None:
    assert d.call("POST", "/v1/tenants", {"id": tid, "engine": "simulator"})[0] == 201
    sync_until(lambda: d.states().get(tid) == "connected", 20)


def simulate_media(d: Daemon, tid: str, media: dict, **extra) -> str:
    body = {"action": "message", "chat": "15557654321", "media": media, **extra}
    code, out = d.call("POST", f"/v1/tenants/{tid}/simulate", body)
    assert code == 202, out
    return out["ids"][0]


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data")
    yield d
    d.kill()


def test_bytes_served_equal_bytes_sent_and_survive_a_restart(daemon):
    daemon.start()
    add_tenant(daemon, "acme")
    photo = os.urandom(700_000)
    wa_photo = simulate_media(
        daemon,
        "acme",
        {"type": "image", "mime": "image/jpeg", "data_b64": base64.b64encode(photo).decode()},
    )
    wa_video = simulate_media(daemon, "acme", {"type": "video", "size": 3_000_000}, expired=True)
    photo_media = settled(daemon, "acme", wa_photo)
    assert photo_media["status"] == "stored"
    assert photo_media["sha256"] == hashlib.sha256(photo).hexdigest()
    code, body, headers = fetch(daemon, photo_media["url"])
    assert code == 200 and body == photo
    assert headers["Content-Type"] == "image/jpeg"
    code, body, _ = fetch(daemon, photo_media["url"], {"Range": "bytes=-1000"})
    assert code == 206 and body == photo[-1000:]
    video_media = settled(daemon, "acme", wa_video)  # expired: re-uploaded, then stored
    assert video_media["status"] == "stored"
    code, body, _ = fetch(daemon, video_media["url"])
    assert hashlib.sha256(body).hexdigest() == video_media["sha256"] == video_media["url"][-64:]

    assert daemon.stop() == 0
    daemon.start()
    code, body, headers = fetch(daemon, photo_media["url"])
    assert code == 200 and body == photo
    etag = headers["ETag"]
    assert fetch(daemon, photo_media["url"], {"If-None-Match": etag})[0] == 304
    code, metrics, _ = fetch(daemon, "/metrics")
    text = metrics.decode()
    assert 'oxyd_media_bytes_stored{tenant="acme"} 3.7e+06' in text
    assert "oxyd_media_queue_depth 0.0" in text


def test_sigkill_mid_download_leaves_no_visible_partial_and_resumes(tmp_path):
    slow = Daemon(tmp_path / "data", OXYD_SIMULATOR_CDN_BYTES_PER_S="1000000")
    try:
        slow.start()
        add_tenant(slow, "acme")
        wa_id = simulate_media(slow, "acme", {"type": "document", "size": 8_000_000})
        partial_dir = slow.data_dir / "tenants" / "acme" / "media" / ".partial"

        def downloading() -> bool:
            return partial_dir.is_dir() and any(
                p.stat().st_size > 200_000 for p in partial_dir.iterdir()
            )

        sync_until(downloading, 30, "a download half-way")
        slow.kill()  # SIGKILL
        media = slow.data_dir / "tenants" / "acme" / "media"
        stored = [p for p in media.rglob("*") if p.is_file() and ".partial" not in p.parts]
        assert stored == []  # nothing where it could be served
        con_state = _row_status(slow.data_dir, wa_id)
        assert con_state == "pending"
    finally:
        slow.kill()
    fast = Daemon(tmp_path / "data", port=slow.port)
    try:
        fast.start()
        result = settled(fast, "acme", wa_id)
        assert result["status"] == "stored" and result["size"] == 8_000_000
        code, body, _ = fetch(fast, result["url"])
        assert code == 200 and hashlib.sha256(body).hexdigest() == result["sha256"]
        assert not any(partial_dir.iterdir()) if partial_dir.exists() else True
    finally:
        fast.kill()


def test_restore_without_media_downloads_the_files_again_or_says_why_not(daemon, tmp_path):
    """A backup without backup.media, restored: the rows say stored but the files are gone.
    At the next start they go back to pending; a file whose CDN copy is still there comes
    back (same URL, same bytes), one whose copy is gone too fails with the reason."""
    import asyncio
    import shutil

    from oxyd.backup import create_backup, restore_backup

    daemon.start()
    add_tenant(daemon, "acme")
    photo = os.urandom(400_000)
    wa_photo = simulate_media(
        daemon, "acme", {"type": "image", "data_b64": base64.b64encode(photo).decode()}
    )
    wa_doc = simulate_media(daemon, "acme", {"type": "document", "size": 300_000})
    photo_media, doc_media = settled(daemon, "acme", wa_photo), settled(daemon, "acme", wa_doc)
    assert photo_media["status"] == doc_media["status"] == "stored"
    assert daemon.stop() == 0

    key = os.urandom(32)
    archive = asyncio.run(create_backup(daemon.data_dir, key, media=False))
    # The simulated CDN lives in the tenant folder, which a restore replaces: keep the
    # photo's copy aside (WhatsApp's CDN is not ours to restore), let the document's go.
    cdn = daemon.data_dir / "tenants" / "acme" / "simcdn"
    aside = tmp_path / "cdn-aside"
    aside.mkdir()
    for f in cdn.iterdir():
        if f.is_file() and f.read_bytes() == photo:
            shutil.copy2(f, aside / f.name)
    assert len(list(aside.iterdir())) == 1
    asyncio.run(restore_backup(archive, daemon.data_dir, key, force=True))
    assert not (daemon.data_dir / "tenants" / "acme" / "media").exists()
    cdn.mkdir(parents=True, exist_ok=True)
    for f in aside.iterdir():
        shutil.copy2(f, cdn / f.name)

    daemon.start()

    def photo_back() -> bool:
        code, body, _ = fetch(daemon, photo_media["url"])
        return code == 200 and body == photo

    sync_until(photo_back, 60, "the photo downloaded again")
    assert settled(daemon, "acme", wa_photo)["url"] == photo_media["url"]

    def doc_failed() -> bool:
        media = media_of(daemon, "acme", wa_doc)
        return bool(media) and media["status"] == "failed"

    sync_until(doc_failed, 60, "the document failed for good")
    reason = media_of(daemon, "acme", wa_doc)["reason"]
    assert "404" in reason and "no longer has this file" in reason, reason
    code, _, _ = fetch(daemon, doc_media["url"])
    assert code == 404


def _row_status(data_dir, wa_id: str) -> str:
    import sqlite3

    con = sqlite3.connect(data_dir / "oxyd.sqlite3")
    try:
        (raw,) = con.execute("SELECT media FROM messages WHERE wa_id=?", (wa_id,)).fetchone()
    finally:
        con.close()
    return json.loads(raw)["status"]
