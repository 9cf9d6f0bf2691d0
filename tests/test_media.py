"""Incoming media through a real App (real SQLite, real files, the simulator's CDN on a real
local HTTP server): download, verify, dedup, serve (Range, 304), expiry and re-upload, quota,
policy, retention, retries by hand."""

from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest
from helpers import until
from http_helpers import Harness

from oxyd.media import files
from oxyd.media import retention as media_retention


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await Harness.start(tmp_path, monkeypatch)
    yield harness
    await harness.close()


async def send_media(h: Harness, tid: str, media: dict, **extra) -> str:
    body = {"action": "message", "chat": "15557654321", "media": media, **extra}
    r = await h.req("POST", f"/v1/tenants/{tid}/simulate", json=body)
    assert r.status == 202, await r.text()
    return (await r.json())["ids"][0]


async def message(h: Harness, tid: str, wa_id: str) -> dict:
    r = await h.req("GET", f"/v1/tenants/{tid}/messages")
    assert r.status == 200
    for m in (await r.json())["messages"]:
        if m["id"] == wa_id:
            return m
    raise AssertionError(f"message {wa_id} not listed")


async def settled(h: Harness, tid: str, wa_id: str, timeout_s: float = 20) -> dict:
    async def done():
        try:
            m = await message(h, tid, wa_id)
        except AssertionError:
            return None
        return m if m["media"]["status"] != "pending" else None

    return await until(done, timeout_s, f"media of {wa_id} settled")


async def test_image_downloaded_verified_and_served(h):
    await h.add("acme")
    data = os.urandom(300_000)
    wa_id = await send_media(
        h,
        "acme",
        {
            "type": "image",
            "mime": "image/png",
            "data_b64": base64.b64encode(data).decode(),
            "caption": "broken tap",
        },
    )
    m = await settled(h, "acme", wa_id)
    sha = hashlib.sha256(data).hexdigest()
    assert m["kind"] == "image" and m["text"] == "broken tap"
    media = m["media"]
    assert media["status"] == "stored", media
    assert media["sha256"] == sha and media["size"] == len(data)
    assert media["type"] == "image" and media["mime"] == "image/png"
    assert media["caption"] == "broken tap"
    assert media["url"] == f"/v1/tenants/acme/media/{sha}"

    path = files.path_of(h.app.cfg.data_dir, "acme", sha)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((path.parent.parent / files.PARTIAL_DIR).glob("*"))

    r = await h.req("GET", media["url"])
    assert r.status == 200
    assert await r.read() == data
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Length"] == str(len(data))
    assert "private" in r.headers["Cache-Control"]
    etag = r.headers["ETag"]

    r = await h.req("GET", media["url"], headers={"Range": "bytes=100-199"})
    assert r.status == 206
    assert await r.read() == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"

    r = await h.req("GET", media["url"], headers={"If-None-Match": etag})
    assert r.status == 304

    r = await h.req("GET", media["url"], headers={"Range": f"bytes={len(data) + 5}-"})
    assert r.status == 416
    assert (await r.json())["error"]["code"] == "range_not_satisfiable"


async def test_another_tenant_cannot_read_by_hash(h):
    await h.add("acme")
    await h.add("other")
    data = b"contract " * 1000
    wa_id = await send_media(
        h, "acme", {"type": "document", "data_b64": base64.b64encode(data).decode()}
    )
    m = await settled(h, "acme", wa_id)
    sha = m["media"]["sha256"]
    token = await h.token("other")
    # with its own tenant id in the path: the hash is not among its files
    r = await h.req("GET", f"/v1/tenants/other/media/{sha}", token=token)
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "media_not_found"
    # with the owner's id in the path: the tenant is not visible to this token
    r = await h.req("GET", f"/v1/tenants/acme/media/{sha}", token=token)
    assert r.status == 404
    own = await h.token("acme")
    r = await h.req("GET", f"/v1/tenants/acme/media/{sha}", token=own)
    assert r.status == 200 and await r.read() == data
    for bad in ("0" * 64, "xyz", "A" * 64):
        r = await h.req("GET", f"/v1/tenants/acme/media/{bad}")
        assert r.status == 404


async def test_identical_files_stored_once(h):
    await h.add("acme")
    b64 = base64.b64encode(os.urandom(50_000)).decode()
    ids = [await send_media(h, "acme", {"type": "image", "data_b64": b64}) for _ in range(3)]
    shas = {(await settled(h, "acme", i))["media"]["sha256"] for i in ids}
    assert len(shas) == 1
    stored = files.listing(h.app.cfg.data_dir, "acme")
    assert list(stored) == list(shas)
    downloads = h.app.extras["media"]
    assert downloads.bytes_by_tenant["acme"] == 50_000


async def test_expired_copy_is_reuploaded_then_stored(h):
    await h.add("acme")
    wa_id = await send_media(h, "acme", {"type": "video", "size": 123_456}, expired=True)
    m = await settled(h, "acme", wa_id)
    assert m["media"]["status"] == "stored", m["media"]
    downloads = h.app.extras["media"]
    assert downloads.results["expired"] == 1 and downloads.results["reuploaded"] == 1
    r = await h.req("GET", m["media"]["url"])
    assert len(await r.read()) == 123_456


async def test_reupload_that_fails_marks_failed_with_reason_and_retry_by_hand(h):
    await h.add("acme")
    wa_id = await send_media(h, "acme", {"type": "audio", "size": 1000}, expired=True)
    # the phone lost the file: the re-upload cannot succeed
    cdn = h.app.engines["simulator"].cdn
    for p in cdn.folder("acme").iterdir():
        if not p.name.endswith(".expired"):
            p.unlink()
    m = await settled(h, "acme", wa_id)
    assert m["media"]["status"] == "failed"
    assert "re-upload" in m["media"]["reason"]
    r = await h.req("POST", f"/v1/tenants/acme/messages/{wa_id}/media")
    assert r.status == 202
    assert (await r.json())["media"]["status"] == "pending"
    m = await settled(h, "acme", wa_id)
    assert m["media"]["status"] == "failed"


async def test_retry_route_errors(h):
    await h.add("acme")
    r = await h.req("POST", "/v1/tenants/acme/messages/NOPE/media")
    assert r.status == 404 and (await r.json())["error"]["code"] == "message_not_found"
    r = await h.req(
        "POST",
        "/v1/tenants/acme/simulate",
        json={"action": "message", "chat": "15557654321", "text": "hi", "id": "TXT1"},
    )
    await until(lambda: h.app.supervisor.runners["acme"].t.messages_stored >= 1)
    r = await h.req("POST", "/v1/tenants/acme/messages/TXT1/media")
    assert r.status == 409 and (await r.json())["error"]["code"] == "no_media"
    r = await h.req("POST", "/v1/tenants/acme/messages/TXT1/media", data=b"[1]")
    assert r.status == 400


async def test_policy_skips_and_manual_retry_fetches(tmp_path, monkeypatch):
    h = await Harness.start(tmp_path, monkeypatch, OXYD_MEDIA_TYPES="image")
    try:
        await h.add("acme")
        wa_id = await send_media(h, "acme", {"type": "video", "size": 2000})
        m = await message(h, "acme", wa_id) if False else await settled(h, "acme", wa_id)
        assert m["media"]["status"] == "skipped"
        assert "media.types" in m["media"]["reason"]
        r = await h.req("POST", f"/v1/tenants/acme/messages/{wa_id}/media")
        assert r.status == 202
        m = await settled(h, "acme", wa_id)
        assert m["media"]["status"] == "stored"
        r = await h.req("POST", f"/v1/tenants/acme/messages/{wa_id}/media")
        assert r.status == 200 and (await r.json())["media"]["status"] == "stored"
    finally:
        await h.close()


async def test_quota_skips_and_alerts_once(tmp_path, monkeypatch):
    h = await Harness.start(tmp_path, monkeypatch, OXYD_MEDIA_QUOTA_MB="1")
    try:
        await h.add("acme")
        r = await h.req(
            "PUT",
            "/v1/tenants/acme/webhook",
            json={"url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
        )
        assert r.status in (200, 204), await r.text()
        first = await send_media(h, "acme", {"type": "document", "size": 700_000})
        assert (await settled(h, "acme", first))["media"]["status"] == "stored"
        second = await send_media(h, "acme", {"type": "document", "size": 700_000})
        third = await send_media(h, "acme", {"type": "document", "size": 700_000})
        for wa_id in (second, third):
            m = await settled(h, "acme", wa_id)
            assert m["media"]["status"] == "skipped"
            assert "quota" in m["media"]["reason"]
        async with h.app.store.ro.execute(
            "SELECT count(*) FROM outbox WHERE type='alert.media_quota'"
        ) as cur:
            assert (await cur.fetchone())[0] == 1
        async with h.app.store.ro.execute(
            "SELECT count(*) FROM outbox WHERE type='message.media'"
        ) as cur:
            assert (await cur.fetchone())[0] == 1  # stored; skipped ones are not "for good"
    finally:
        await h.close()


async def test_a_file_lost_behind_our_back_is_fetched_again_when_served(h):
    await h.add("acme")
    data = os.urandom(200_000)
    wa_id = await send_media(
        h, "acme", {"type": "image", "data_b64": base64.b64encode(data).decode()}
    )
    url = (await settled(h, "acme", wa_id))["media"]["url"]
    files.path_of(h.app.cfg.data_dir, "acme", url[-64:]).unlink()
    r = await h.req("GET", url)
    assert r.status == 404 and "downloaded again" in (await r.json())["error"]["message"]

    async def back():
        r = await h.req("GET", url)
        return r.status == 200 and await r.read() == data

    await until(back, 20, "the file fetched again")
    m = await message(h, "acme", wa_id)
    assert m["media"]["status"] == "stored" and m["media"]["url"] == url
    assert h.app.extras["media"].bytes_by_tenant["acme"] == len(data)


async def _alerts(h: Harness) -> int:
    async with h.app.store.ro.execute(
        "SELECT count(*) FROM outbox WHERE type='alert.media_quota'"
    ) as cur:
        return (await cur.fetchone())[0]


async def test_quota_alert_once_survives_restarts_until_the_quota_or_usage_changes(
    tmp_path, monkeypatch
):
    """Once is durable: a restart does not alert again; another quota, or usage that went
    down (retention), lets the next refused file alert again."""

    async def restarted(quota_mb: str) -> Harness:
        h = await Harness.start(tmp_path, monkeypatch, OXYD_MEDIA_QUOTA_MB=quota_mb)
        await until(lambda: h.app.supervisor.runners["acme"].t.state == "connected")
        return h

    async def refused(h: Harness) -> None:
        wa_id = await send_media(h, "acme", {"type": "document", "size": 700_000})
        assert "quota" in (await settled(h, "acme", wa_id))["media"]["reason"]

    h = await Harness.start(tmp_path, monkeypatch, OXYD_MEDIA_QUOTA_MB="1")
    try:
        await h.add("acme")
        r = await h.req(
            "PUT", "/v1/tenants/acme/webhook", json={"url": "http://127.0.0.1:9/h", "secret": "s"}
        )
        assert r.status in (200, 204), await r.text()
        first = await send_media(h, "acme", {"type": "document", "size": 700_000})
        assert (await settled(h, "acme", first))["media"]["status"] == "stored"
        await refused(h)
        assert await _alerts(h) == 1
    finally:
        await h.close()
    h = await restarted("1")
    try:
        await refused(h)
        assert await _alerts(h) == 1  # not again after the restart
    finally:
        await h.close()
    h = await restarted("1.5")  # another quota: the next refused file alerts again
    try:
        fits = await send_media(h, "acme", {"type": "document", "size": 700_000})
        assert (await settled(h, "acme", fits))["media"]["status"] == "stored"
        await refused(h)
        await refused(h)
        assert await _alerts(h) == 2
        # usage goes down (the stored file's message is deleted, retention frees it)
        await h.app.store.prune_messages(h.app.clock.now_ms() + 1)
        downloads = h.app.extras["media"]
        await media_retention.sweep(
            h.app.cfg.media, h.app.cfg.data_dir, downloads.table, downloads, h.app.clock
        )
        assert await downloads.table.quota_alerts() == {}
    finally:
        await h.close()


async def test_retention_removes_unreferenced_files(h):
    await h.add("acme")
    wa_id = await send_media(h, "acme", {"type": "image", "size": 4096})
    m = await settled(h, "acme", wa_id)
    sha = m["media"]["sha256"]
    data_dir = h.app.cfg.data_dir
    downloads = h.app.extras["media"]
    # a file no row refers to (left by hand, or its message was deleted)
    stray = files.path_of(data_dir, "acme", "ab" * 32)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"x")
    out = await media_retention.sweep(
        h.app.cfg.media, data_dir, downloads.table, downloads, h.app.clock
    )
    assert out["files_deleted"] == 1 and not stray.exists()
    assert files.exists(data_dir, "acme", sha)
    # the message goes (message retention): its file goes at the next sweep
    await h.app.store.prune_messages(h.app.clock.now_ms() + 1)
    out = await media_retention.sweep(
        h.app.cfg.media, data_dir, downloads.table, downloads, h.app.clock
    )
    assert out["orphans"] == 1 and out["files_deleted"] == 1
    assert not files.exists(data_dir, "acme", sha)
    assert downloads.bytes_by_tenant["acme"] == 0


async def test_webhook_received_carries_pending_media_and_media_event_fires(h):
    await h.add("acme")
    r = await h.req(
        "PUT",
        "/v1/tenants/acme/webhook",
        json={"url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
    )
    assert r.status in (200, 204)
    wa_id = await send_media(h, "acme", {"type": "voice", "size": 3000, "duration_s": 4})
    await settled(h, "acme", wa_id)
    import json

    async with h.app.store.ro.execute(
        "SELECT type, body FROM outbox WHERE type IN ('message.received', 'message.media')"
        " ORDER BY id"
    ) as cur:
        rows = [(t, json.loads(b)["data"]) for t, b in await cur.fetchall()]
    assert [t for t, _ in rows] == ["message.received", "message.media"]
    received, media = rows[0][1]["media"], rows[1][1]["media"]
    assert received["status"] == "pending" and received["url"] is None
    assert received["type"] == "voice" and received["duration_s"] == 4
    assert media["status"] == "stored" and media["url"].endswith(media["sha256"])


async def test_sent_media_is_kept_and_served_like_incoming(tmp_path, monkeypatch):
    """Media oxyd sends itself: the bytes sent are stored content-addressed, the message says
    stored with its url (in the API and in message.sent), GET serves them, an incoming copy
    of the same file reuses them; a type the policy leaves out is skipped with the reason."""
    import json

    h = await Harness.start(
        tmp_path, monkeypatch, OXYD_SEND_RATE_PER_MIN="6000", OXYD_MEDIA_TYPES="image"
    )
    try:
        await h.add("acme")
        r = await h.req(
            "PUT", "/v1/tenants/acme/webhook", json={"url": "http://127.0.0.1:9/h", "secret": "s"}
        )
        assert r.status in (200, 204)
        photo = b"\x89PNG\r\n\x1a\n" + os.urandom(50_000)
        b64 = base64.b64encode(photo).decode()

        async def send(media: dict) -> dict:
            body = {"to": "15557654321", "media": media}
            r = await h.req("POST", "/v1/tenants/acme/messages?wait=10", json=body)
            assert r.status in (200, 202), await r.text()
            msg_id = (await r.json())["id"]

            async def sent():
                r = await h.req("GET", f"/v1/tenants/acme/messages/{msg_id}")
                m = await r.json()
                return m if m["status"] != "queued" and m.get("media") else None

            return await until(sent, 20, "sent and written")

        m = await send({"type": "image", "data_b64": b64, "caption": "the tap"})
        sha = hashlib.sha256(photo).hexdigest()
        assert m["media"]["status"] == "stored" and m["media"]["sha256"] == sha
        assert m["media"]["url"] == f"/v1/tenants/acme/media/{sha}"
        r = await h.req("GET", m["media"]["url"])
        assert r.status == 200 and await r.read() == photo
        path = files.path_of(h.app.cfg.data_dir, "acme", sha)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert h.app.extras["media"].bytes_by_tenant["acme"] == len(photo)

        doc = await send({"type": "document", "data_b64": b64, "filename": "a.pdf"})
        assert doc["media"]["status"] == "skipped" and "media.types" in doc["media"]["reason"]

        async with h.app.store.ro.execute(
            "SELECT body FROM outbox WHERE type='message.sent' ORDER BY id"
        ) as cur:
            events = [json.loads(b)["data"]["media"] for (b,) in await cur.fetchall()]
        assert [e["status"] for e in events] == ["stored", "skipped"]

        # the same file arriving later is stored once (found on disk, no second copy)
        wa_id = await send_media(h, "acme", {"type": "image", "data_b64": b64})
        assert (await settled(h, "acme", wa_id))["media"]["url"] == m["media"]["url"]
        assert h.app.extras["media"].bytes_by_tenant["acme"] == len(photo)

        # retention keeps a kept file whose row may not be committed yet, and the stored one
        downloads = h.app.extras["media"]
        out = await media_retention.sweep(
            h.app.cfg.media, h.app.cfg.data_dir, downloads.table, downloads, h.app.clock
        )
        assert out["files_deleted"] == 0 and path.exists()

        # lost: the copy kept was the only one; the sent message says so (the incoming one
        # has a CDN reference and comes back)
        path.unlink()
        assert (await h.req("GET", m["media"]["url"])).status == 404

        async def failed():
            r = await h.req("GET", f"/v1/tenants/acme/messages/{m['id']}")
            media = (await r.json())["media"]
            return media if media["status"] == "failed" else None

        media = await until(failed, 20, "the sent copy failed")
        assert "copy kept of this sent file is missing" in media["reason"]
        # the incoming copy (it has a CDN reference) comes back; then a retry by hand of the
        # sent one finds the file again
        assert (await settled(h, "acme", wa_id))["media"]["status"] == "stored"
        r = await h.req("POST", f"/v1/tenants/acme/messages/{m['id']}/media")
        assert r.status == 202, await r.text()

        async def stored():
            r = await h.req("GET", f"/v1/tenants/acme/messages/{m['id']}")
            return (await r.json())["media"]["status"] == "stored"

        await until(stored, 20, "the sent copy stored again")
    finally:
        await h.close()


async def test_sent_media_over_the_quota_is_not_kept_and_says_why(tmp_path, monkeypatch):
    h = await Harness.start(
        tmp_path, monkeypatch, OXYD_SEND_RATE_PER_MIN="6000", OXYD_MEDIA_QUOTA_MB="0.01"
    )
    try:
        await h.add("acme")
        body = {
            "to": "15557654321",
            "media": {"type": "image", "data_b64": base64.b64encode(os.urandom(50_000)).decode()},
        }
        r = await h.req("POST", "/v1/tenants/acme/messages", json=body)
        msg_id = (await r.json())["id"]

        async def written():
            r = await h.req("GET", f"/v1/tenants/acme/messages/{msg_id}")
            return (await r.json()).get("media")

        media = await until(written, 20, "sent and written")
        assert media["status"] == "skipped" and media["url"] is None
        assert "no copy kept" in media["reason"] and "quota" in media["reason"]
    finally:
        await h.close()


def test_incoming_media_without_a_path_is_skipped_with_its_reason():
    from oxyd import model
    from oxyd.config import MediaConfig
    from oxyd.store.media import policy_status

    msg = model.Message(
        wa_id="X", chat="c", sender="s", from_me=False, sent_at_ms=1, kind="image",
        media=model.Media(mime="image/jpeg", size_bytes=10),
    )  # fmt: skip
    assert policy_status(MediaConfig(), msg) == (
        "skipped",
        "no download reference: the message carries no media path",
    )
