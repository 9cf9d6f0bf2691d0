"""A copy of the media oxyd sends itself.

The bytes of a photo, voice note or document sent through the API are in hand when it is
sent, and cannot be fetched back later (a sent message carries no download reference here).
So the sender hands them over right after the send, before the message is written: they are
stored content-addressed like incoming media (same folder, same dedup, the same policy:
`media.download`, `types`, `max_bytes`, `quota_mb`, `fsync`), and the message is written with
`media.status: stored` and its url. When the copy cannot be kept the message says why
(`skipped`); the send itself is never held up by a failure here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import TYPE_CHECKING

from loguru import logger

from oxyd.media import files
from oxyd.model import Message
from oxyd.store.media import KEPT_REF

if TYPE_CHECKING:
    from oxyd.media.downloader import Downloads

MIB = 1 << 20
# A kept file is on disk before the writer commits its row: retention leaves it alone this
# long (a writer backlog of an hour would be an outage of its own).
FRESH_S = 3600.0


async def keep_sent(downloads: Downloads, tenant: str, msg: Message, data: bytes | None) -> Message:
    """The message to write for a sent one: with its media kept (ref KEPT_REF, the hash of
    the bytes), or unchanged when the policy says no or the copy failed."""
    md, cfg = msg.media, downloads.cfg
    if md is None or not data or md.ref:
        return msg
    if not cfg.download or not cfg.wants(msg.kind) or len(data) > cfg.max_bytes:
        return msg  # the row's reason is the policy's (oxyd/store/media.py)
    log = logger.bind(tenant=tenant)
    quota = int(cfg.quota_mb * MIB)
    room = quota - downloads.bytes_by_tenant[tenant] if quota else None
    try:
        sha = md.sha256 or await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        key = (tenant, sha)
        downloads.committing[key] += 1
        try:
            outcome = await downloads.flusher.run(
                files.keep, downloads.data_dir, tenant, data, sha, room, cfg.fsync
            )
            if outcome != "no_room":
                _fresh(downloads, key)
        finally:
            downloads.committing[key] -= 1
            if downloads.committing[key] <= 0:
                del downloads.committing[key]
    except Exception as e:  # disk full, permissions: the send went out; say so, go on
        log.opt(exception=e).error("media: no copy kept of sent {}: {}", msg.wa_id, e)
        return msg
    if outcome == "no_room":
        log.warning("media: no copy kept of sent {}: media.quota_mb reached", msg.wa_id)
        return msg
    if outcome == "new":
        downloads.bytes_by_tenant[tenant] += len(data)
    downloads.results["kept"] += 1
    media = dataclasses.replace(md, ref=KEPT_REF, sha256=sha, size_bytes=len(data))
    return dataclasses.replace(msg, media=media)


def _fresh(downloads: Downloads, key: tuple[str, str]) -> None:
    now_s = downloads.clock.monotonic()
    fresh = downloads.fresh
    for k in [k for k, until_s in fresh.items() if until_s < now_s]:
        del fresh[k]
    fresh[key] = now_s + FRESH_S


def busy(downloads: Downloads, tenant: str) -> set[str]:
    """Hashes retention must not delete now: files being committed, and kept files whose
    row the writer may not have committed yet."""
    now_s = downloads.clock.monotonic()
    out = {sha for (t, sha) in downloads.committing if t == tenant}
    fresh = downloads.fresh.items()
    out.update(sha for (t, sha), until_s in fresh if t == tenant and until_s >= now_s)
    return out
