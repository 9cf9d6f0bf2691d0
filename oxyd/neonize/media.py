"""Incoming media on the neonize engine: download references and the download call.

What neonize 0.5.2 can do (read in its wheel and Go shim): `DownloadAny(message)` and
`DownloadMediaWithPath(...)` both return the WHOLE decrypted file as bytes through the FFI
(its `path` argument only writes those bytes afterwards); there is no streaming download, and
there is no export for whatsmeow's `SendMediaRetryReceipt` nor a MediaRetry event (its .so
exports no such symbol, and upstream's goneonize lists MediaRetry as "not implemented yet").
So here:
- the announced size is checked against `max_bytes` BEFORE the call (WhatsApp's fileLength),
  which bounds the memory a download can take;
- the bytes are written and hashed in a thread, then dropped;
- a re-upload request is refused with a clear reason (the simulator models the full path).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from oxyd.engine import EngineError, NotConnected

if TYPE_CHECKING:
    from oxyd.neonize.client import NeonizeClient

NO_MEDIA_RETRY = (
    "asking the phone to re-upload is not available with this engine (neonize 0.5.2 exports"
    " no SendMediaRetryReceipt); POST /v1/tenants/{id}/messages/{msg_id}/media downloads it"
    " again"
)
# whatsmeow: ErrMediaDownloadFailedWith403/404/410 ("download failed with status code N"),
# ErrNoURLPresent: the CDN copy is gone.
_GONE_RE = re.compile(r"status code (403|404|410)\b|no url present", re.IGNORECASE)
# The fields a download needs; thumbnails and context are left out of the reference.
_KEEP = (
    "URL",
    "directPath",
    "mediaKey",
    "fileEncSHA256",
    "fileSHA256",
    "fileLength",
    "mimetype",
    "mediaKeyTimestamp",
)
# waE2E field holding the media -> field used in the reference (DownloadAny knows these).
_FIELDS = {
    "imageMessage": "imageMessage",
    "videoMessage": "videoMessage",
    "ptvMessage": "videoMessage",
    "audioMessage": "audioMessage",
    "documentMessage": "documentMessage",
    "stickerMessage": "stickerMessage",
}


def make_ref(field: str, part: Any) -> str | None:
    """The download reference of one media part of a waE2E Message: that part alone, with
    only what a download needs, serialised and base64-encoded (plain data for the pipe)."""
    target = _FIELDS.get(field)
    if target is None or (not part.directPath and not getattr(part, "URL", "")):
        return None
    # The Message class of the part's own protobuf module: no neonize import here (the event
    # translation is tested on hand-built protobufs, and runs wherever they come from).
    msg = sys.modules[type(part).__module__].Message()
    slim = getattr(msg, target)
    for name in _KEEP:
        if part.HasField(name):
            setattr(slim, name, getattr(part, name))
    return base64.b64encode(msg.SerializeToString()).decode()


def is_gone(error_text: str) -> bool:
    """Whether a whatsmeow download error means the CDN copy is gone (not a transient)."""
    return _GONE_RE.search(error_text) is not None


def parse_ref(ref: str) -> Any:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    try:
        msg = e2e.Message.FromString(base64.b64decode(ref, validate=True))
    except (binascii.Error, ValueError, Exception) as e:
        raise EngineError(f"not a neonize media reference: {e}") from None
    for target in set(_FIELDS.values()):
        if msg.HasField(target):
            return msg, getattr(msg, target)
    raise EngineError("not a neonize media reference: no media part")


async def download(client: NeonizeClient, ref: str, dest: str, max_bytes: int) -> dict:
    msg, part = parse_ref(ref)
    if part.fileLength and part.fileLength > max_bytes:
        # The only bound neonize allows: it would hold the whole file in memory.
        return {"status": "too_large", "error": f"{part.fileLength} bytes announced"}
    if not client.running:
        raise NotConnected("not connected")

    async def call() -> bytes | None:
        # Shared side of the gate, held until the Go call returns even if our caller is
        # cancelled (Gate.run): a download never overlaps a connect's map writes.
        if not client.running or not await client._nc.is_logged_in:
            return None
        return await client._nc.download_any(msg)

    try:
        data = await client.engine.gate.run(call, exclusive=False)
    except Exception as e:
        text = str(e) or type(e).__name__
        if is_gone(text):
            return {"status": "expired", "error": text}
        raise EngineError(f"media download failed: {text}") from e
    if data is None:
        raise NotConnected("not connected")
    if len(data) > max_bytes:
        return {"status": "too_large", "error": f"{len(data)} bytes"}
    sha = await asyncio.to_thread(write_file, dest, data)
    return {"status": "ok", "size": len(data), "sha256": sha}


def write_file(dest: str, data: bytes) -> str:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()
