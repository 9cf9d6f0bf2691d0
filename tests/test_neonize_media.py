"""Incoming media on the neonize engine: real waE2E protobufs translated into the media fields
and a download reference, and the download call path with no network (a clear failure that
the downloader retries later, costing no attempt)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid

import pytest
from helpers import until

from oxyd.clock import RealClock
from oxyd.config import MediaConfig
from oxyd.engine import NotConnected
from oxyd.media.downloader import Downloads
from oxyd.model import ClientDead as model_dead
from oxyd.neonize import events as tr
from oxyd.neonize import media as nmedia
from oxyd.neonize.engine import NeonizeEngine, import_neonize
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.store.media import MediaTable
from oxyd.store.writer import Writer

import_neonize()


@contextlib.asynccontextmanager
async def image_downloads(tmp_path, tid, client):
    """A store with one incoming image message of `tid` (wa id MEDIA1) and the downloader
    started on it, every download through `client`: yields (media table, downloads)."""
    store = await Store.open(tmp_path)
    try:
        subs = outbox.Subscriptions(None)
        writer = Writer(store, RealClock(), subs)
        writer.start()
        msg = tr.message_from_event(
            event(e2e.Message(imageMessage=e2e.ImageMessage(fileLength=10, **COMMON)))
        )
        await writer.put(tid, msg)
        await writer.flush()
        table = MediaTable(store, subs)
        downloads = Downloads(MediaConfig(), tmp_path, table, RealClock(), lambda t: (client, True))
        await downloads.start()
        downloads.wake()
        yield table, downloads
        await downloads.stop()
        await writer.stop()
    finally:
        await store.close()


npb = pytest.importorskip("neonize.proto.Neonize_pb2")
e2e = pytest.importorskip("neonize.proto.waE2E.WAWebProtobufsE2E_pb2")

SHA = bytes(range(32))
ENC = bytes(range(32, 64))
KEY = bytes(range(64, 96))
ANN = "4915111111111@s.whatsapp.net"


@pytest.fixture(autouse=True)
def neonize_loop_reset():
    from neonize.aioze import events

    events.event_global_loop = None
    yield
    events.event_global_loop = None


def event(body, wa_id="MEDIA1"):
    user, server = ANN.split("@")
    j = npb.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0)
    src = npb.MessageSource(Chat=j, Sender=j, IsFromMe=False, IsGroup=False)
    info = npb.MessageInfo(ID=wa_id, Timestamp=1_700_000_000_000, MessageSource=src)
    return npb.Message(Info=info, Message=body)


COMMON = dict(
    directPath="/v/t62.7118-24/abc?ccb=11-4",
    mediaKey=KEY,
    fileEncSHA256=ENC,
    fileSHA256=SHA,
    mediaKeyTimestamp=1_700_000_000,
)


@pytest.mark.parametrize(
    ("body", "field", "kind", "expect"),
    [
        (
            e2e.Message(
                imageMessage=e2e.ImageMessage(
                    mimetype="image/jpeg",
                    caption="the tap",
                    fileLength=52_000,
                    width=1280,
                    height=960,
                    JPEGThumbnail=b"\xff" * 5000,
                    **COMMON,
                )
            ),
            "imageMessage",
            "image",
            dict(mime="image/jpeg", size_bytes=52_000, caption="the tap", width=1280),
        ),
        (
            e2e.Message(
                audioMessage=e2e.AudioMessage(
                    mimetype="audio/ogg; codecs=opus",
                    PTT=True,
                    seconds=7,
                    fileLength=9000,
                    waveform=b"\x01" * 64,
                    **COMMON,
                )
            ),
            "audioMessage",
            "voice",
            dict(mime="audio/ogg; codecs=opus", size_bytes=9000, duration_s=7),
        ),
        (
            e2e.Message(
                documentMessage=e2e.DocumentMessage(
                    mimetype="application/pdf",
                    fileName="contract.pdf",
                    caption="signed",
                    fileLength=123_456,
                    JPEGThumbnail=b"\x00" * 3000,
                    **COMMON,
                )
            ),
            "documentMessage",
            "document",
            dict(mime="application/pdf", filename="contract.pdf", caption="signed"),
        ),
    ],
)
def test_translation_gives_media_fields_and_a_slim_reference(body, field, kind, expect):
    msg = tr.message_from_event(event(body))
    assert msg is not None and msg.kind == kind
    media = msg.media
    assert media.sha256 == SHA.hex()
    for name, value in expect.items():
        assert getattr(media, name) == value, name
    # the reference: plain text, only what a download needs (no thumbnail, no waveform)
    assert isinstance(media.ref, str)
    raw = base64.b64decode(media.ref)
    assert len(raw) < 300
    wrapper, part = nmedia.parse_ref(media.ref)
    assert wrapper.HasField(field)
    assert part.directPath == COMMON["directPath"] and part.mediaKey == KEY
    assert part.fileEncSHA256 == ENC and part.fileSHA256 == SHA
    assert not part.HasField("contextInfo")
    assert getattr(part, "JPEGThumbnail", b"") == b""


def test_media_without_a_path_has_no_reference():
    body = e2e.Message(imageMessage=e2e.ImageMessage(mimetype="image/jpeg", fileSHA256=SHA))
    assert tr.message_from_event(event(body)).media.ref is None


def test_gone_errors_are_told_apart_from_transient_ones():
    for text in (
        "failed to download: download failed with status code 404",
        "download failed with status code 410",
        "download failed with status code 403",
        "no url present",
    ):
        assert nmedia.is_gone(text), text
    for text in ("websocket not connected", "download failed with status code 500", "EOF"):
        assert not nmedia.is_gone(text), text


async def test_download_without_a_session_is_a_clear_retryable_failure(tmp_path):
    engine = NeonizeEngine(tmp_path)
    tid = f"t{uuid.uuid4().hex[:10]}"
    client = engine.client(tid, lambda ev: None)
    ref = tr.message_from_event(
        event(e2e.Message(imageMessage=e2e.ImageMessage(fileLength=10, **COMMON)))
    ).media.ref
    dest = tmp_path / "out.part"
    with pytest.raises(NotConnected):
        await client.download_media(ref, str(dest), 1 << 20)
    assert not dest.exists()
    # an announced size over the bound is refused before neonize is asked at all
    big = tr.message_from_event(
        event(e2e.Message(imageMessage=e2e.ImageMessage(fileLength=10**9, **COMMON)))
    ).media.ref
    assert (await client.download_media(big, str(dest), 1 << 20))["status"] == "too_large"
    with pytest.raises(Exception, match="re-upload"):
        await client.request_media_reupload(ref, ANN, ANN, "X", False)

    # through the downloader: the row stays pending, no attempt spent, retried later
    async with image_downloads(tmp_path, tid, client) as (table, _):

        async def waiting():
            job = await table.by_wa_id(tid, "MEDIA1")
            return job if job.reason and "connect" in job.reason else None

        job = await until(waiting, 10)
        assert job.status == "pending" and job.attempts == 0
        assert job.next_attempt_ms > RealClock().now_ms()
    assert await engine.close()


async def test_download_through_an_engine_host_with_no_network(tmp_path):
    """The same calls through an engine host process (neonize.hosts): plain data crosses
    the pipe; no session means NotConnected, of the same type; the refusal of a re-upload
    keeps its reason; nothing is written."""
    from neonize_fakes import DelayProxy, install_store, make_template

    from oxyd.engine import EngineError as EngineErrorType
    from oxyd.neonize.pool import HostPool

    ref = tr.message_from_event(
        event(e2e.Message(imageMessage=e2e.ImageMessage(fileLength=10, **COMMON)))
    ).media.ref
    with DelayProxy(0.1) as proxy:
        (tmp_path / "template").mkdir()
        template = make_template(tmp_path / "template", proxy.url)
        pool = HostPool(tmp_path, hosts=1, proxy=proxy.url)
        got: list = []
        try:
            await pool.start()
            install_store(template, tmp_path, "hosted")
            client = pool.client("hosted", got.append)
            dest = tmp_path / "x.part"
            with pytest.raises(NotConnected):
                await client.download_media(ref, str(dest), 1 << 20)
            await client.connect()  # the dial fails at the local proxy (502)
            await until(lambda: any(isinstance(e, model_dead) for e in got), 30, "dial failed")
            with pytest.raises(NotConnected):
                await client.download_media(ref, str(dest), 1 << 20)
            with pytest.raises(EngineErrorType, match="re-upload"):
                await client.request_media_reupload(ref, ANN, ANN, "X", False)
            big = tr.message_from_event(
                event(e2e.Message(imageMessage=e2e.ImageMessage(fileLength=10**9, **COMMON)))
            ).media.ref
            assert (await client.download_media(big, str(dest), 1 << 20))["status"] == "too_large"
            assert not dest.exists()
            await client.stop()
        finally:
            assert await pool.close()


class _GoneCdn:
    """Stands in for neonize's Go client once logged in: its download answers what whatsmeow
    raises for a CDN copy that is gone."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.calls = 0

    @property
    def is_logged_in(self):
        async def yes() -> bool:
            return True

        return yes()

    async def download_any(self, msg):
        self.calls += 1
        raise Exception(f"failed to download: download failed with status code {self.status}")


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_a_gone_cdn_copy_fails_with_the_reason_and_the_way_to_retry(tmp_path, status):
    """The real engine's path for 403/404/410: the download through the gate says `expired`,
    the re-upload request is refused (neonize 0.5.2 has no media retry receipt), and the row
    fails for good with a reason that says so and how to try again."""
    engine = NeonizeEngine(tmp_path)
    tid = f"t{uuid.uuid4().hex[:10]}"
    client = engine.client(tid, lambda ev: None)
    client._nc = cdn = _GoneCdn(status)
    client._task = asyncio.create_task(asyncio.sleep(3600))  # "running"
    try:
        async with image_downloads(tmp_path, tid, client) as (table, downloads):

            async def failed():
                job = await table.by_wa_id(tid, "MEDIA1")
                return job if job.status == "failed" else None

            job = await until(failed, 10)
            assert f"status code {status}" in job.reason
            assert "not available with this engine" in job.reason
            assert "POST /v1/tenants/{id}/messages/{msg_id}/media" in job.reason
            assert cdn.calls == 1 and downloads.results["expired"] == 1
    finally:
        client._task.cancel()
        client._nc = None
