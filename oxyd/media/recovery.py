"""Stored media whose file is gone: back to `pending`, downloaded again.

A restore without `backup.media` brings back rows that say `stored` with no file under them;
so does a file deleted by hand, or a rename the crash before a directory flush undid. Such a
row is put back to pending (with the hash it had as the one expected), at start for every
tenant and whenever serving finds the file missing. The downloader then finds it again: on
disk (another row brought it back), from the CDN if the copy is still there, or through the
expired path (re-upload request, then `failed` with the reason).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from oxyd.media import files
from oxyd.store import media_retention
from oxyd.store.media import MediaTable


async def find_lost(data_dir: Path, table: MediaTable, known: Callable[[str], bool]) -> int:
    """Every tenant's stored rows against its folder (one listing per tenant, not a stat per
    row); rows of tenants that are not `known` (removed, not purged) are left as they are.
    Returns how many rows went back to pending."""
    total = 0
    for tenant in await table.stored_tenants():
        if not known(tenant):
            continue
        try:
            on_disk = await asyncio.to_thread(files.listing, data_dir, tenant)
        except OSError as e:  # an unreadable folder is not "every file lost"
            logger.bind(tenant=tenant).error("media folder unreadable: {}", e)
            continue
        # Listed first, rows second: a file put in place meanwhile has its row read too, so
        # the worst case is a row re-queued whose file is there (the downloader then finds
        # it on disk and marks it stored again, without a download).
        referenced = await media_retention.referenced(table.store, tenant)
        missing = sorted(referenced - on_disk.keys())
        if missing:
            n = await table.mark_lost(tenant, missing)
            total += n
            logger.bind(tenant=tenant).warning(
                "{} stored media file(s) missing from disk ({} message(s)); downloading again",
                len(missing),
                n,
            )
    return total
