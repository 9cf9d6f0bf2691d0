"""Media retention: files no remaining message refers to are deleted.

Runs with the other retention jobs. In order: media rows whose message is gone (message
retention, purges) are dropped; with `media.retention_days`, stored files of messages older
than that are let go (the message stays, its media shows `skipped` with the reason); then every
file on disk that no stored row of its tenant refers to is deleted. A download finishing
meanwhile is never mistaken for an orphan (the downloader marks files it is committing), nor
is a sent file just kept whose message the writer has not committed yet (oxyd/media/kept.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from loguru import logger

from oxyd import datadir
from oxyd.clock import Clock
from oxyd.config import MediaConfig
from oxyd.media import files, kept
from oxyd.media.downloader import Downloads
from oxyd.store import media_retention
from oxyd.store.media import MediaTable

DAY_MS = 86_400_000


async def sweep(
    cfg: MediaConfig, data_dir: Path, table: MediaTable, downloads: Downloads, clock: Clock
) -> dict[str, int]:
    orphans = await media_retention.drop_orphans(table.store)
    expired = 0
    if cfg.retention_days > 0:
        now_ms = clock.now_ms()
        cutoff_ms = now_ms - int(cfg.retention_days * DAY_MS)
        expired = await media_retention.expire_before(table.store, cutoff_ms, now_ms)
    removed = freed = 0
    for tenant in await asyncio.to_thread(datadir.tenant_folders, data_dir):
        try:
            on_disk = await asyncio.to_thread(files.listing, data_dir, tenant)
        except OSError as e:  # one damaged folder never stops the sweep of the others
            logger.bind(tenant=tenant).error("media retention: folder unreadable: {}", e)
            continue
        if not on_disk:
            continue
        # In this order: listed, then the files being committed right now, then the rows.
        # A file moved in before the listing either has its stored row by the query, or was
        # still being committed when `busy` was taken; one moved in later is not listed.
        busy = kept.busy(downloads, tenant)
        keep = await media_retention.referenced(table.store, tenant)
        gone = [sha for sha in on_disk if sha not in keep and sha not in busy]
        for sha in gone:
            try:
                await asyncio.to_thread(files.delete, data_dir, tenant, sha)
            except OSError as e:
                logger.bind(tenant=tenant).error("media retention: cannot delete {}: {}", sha, e)
        removed += len(gone)
        freed += sum(on_disk[s] for s in gone)
    if removed or orphans or expired:
        await downloads.recount()
        logger.info(
            "media retention: {} file(s) deleted ({} bytes freed), {} expired by age,"
            " {} row(s) of deleted messages dropped",
            removed,
            freed,
            expired,
            orphans,
        )
    return {"files_deleted": removed, "bytes_freed": freed, "expired": expired, "orphans": orphans}
