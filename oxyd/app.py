"""The App: store -> writer -> supervisor -> webhooks, built, started and stopped in order.

Tenants stop first, queues drain to disk, the database closes last. The daemon's process
lifecycle (lock, signals, jobs, the control port) is daemon.py, which builds on this.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from oxyd import datadir, log
from oxyd.clock import Clock, RealClock
from oxyd.config import Config
from oxyd.destinations import Guard
from oxyd.engine import Engine
from oxyd.media import kept
from oxyd.media.downloader import Downloads
from oxyd.model import State
from oxyd.simulator.engine import SimulatorEngine
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.store.media import MediaTable
from oxyd.store.writer import Writer
from oxyd.supervision.supervisor import Supervisor
from oxyd.webhooks import Dispatcher


@dataclass
class App:
    cfg: Config
    clock: Clock
    store: Store
    writer: Writer
    subs: outbox.Subscriptions
    supervisor: Supervisor
    webhooks: Dispatcher
    engines: dict[str, Engine]
    admin_token: str
    started_ms: int
    extras: dict[str, Any] = field(default_factory=dict)


def make_engines(cfg: Config, clock: Clock, neonize_tenants: int = 0) -> dict[str, Engine]:
    engines: dict[str, Engine] = {"simulator": SimulatorEngine(cfg.data_dir, cfg.simulator, clock)}
    nz = cfg.neonize
    try:
        if nz.hosts > 0:
            from oxyd.neonize.pool import HostPool

            engines["neonize"] = HostPool(
                cfg.data_dir,
                hosts=nz.hosts,
                tenants_per_host=nz.tenants_per_host,
                proxy=nz.proxy,
                recycle_fds=nz.recycle_fds,
                recycle_rss_mb=nz.recycle_rss_mb,
                pair_timeout_s=cfg.supervisor.pair_timeout_s,
                stop_grace_s=cfg.supervisor.stop_grace_s,
            )
        else:
            from oxyd.neonize.engine import NeonizeEngine

            engines["neonize"] = NeonizeEngine(
                cfg.data_dir,
                # The thread pool's starting size; it grows as tenants are added.
                max_tenants=neonize_tenants,
                clock=clock,
                pair_timeout_s=cfg.supervisor.pair_timeout_s,
                stop_grace_s=cfg.supervisor.stop_grace_s,
                proxy=nz.proxy,
            )
    except ImportError as e:  # neonize's wheel exists for the common platforms only
        logger.warning("neonize engine unavailable ({}); only simulator tenants will run", e)
    return engines


async def build(
    cfg: Config, clock: Clock | None = None, engines: dict[str, Engine] | None = None
) -> App:
    """Open everything but start no tenant and no server (tests build apps this way)."""
    clock = clock or RealClock()
    await asyncio.to_thread(datadir.prepare, cfg.data_dir)
    token, source = await asyncio.to_thread(
        datadir.admin_token,
        cfg.data_dir,
        os.environ.get("OXYD_ADMIN_TOKEN"),
        cfg.http.admin_token_file,
    )
    log.redact(token)
    log.redact(cfg.webhooks.secret)
    logger.info("admin token from {}", source)
    store = await Store.open(cfg.data_dir)
    subs = outbox.Subscriptions(cfg.webhooks.events if cfg.webhooks.url else None)
    writer = Writer(
        store,
        clock,
        subs,
        batch_max=cfg.store.batch_max,
        queue_max=cfg.store.queue_max,
        drain_timeout_s=cfg.supervisor.stop_grace_s + 30,
    )
    if engines is None:
        n = sum(t.engine == "neonize" for t in await store.tenants())
        engines = make_engines(cfg, clock, n)
    sup = Supervisor(cfg, store, writer, subs, clock, engines)
    if hasattr(engines.get("neonize"), "connect_slot"):
        # Tenants moving off a recycled engine host reconnect through the same connect limit.
        engines["neonize"].connect_slot = sup.gate.slot  # type: ignore[attr-defined]
    writer._on_commit = sup.on_stored
    guard = Guard(cfg.webhooks.allow_private, cfg.http.host, cfg.http.port)
    disp = Dispatcher(store, cfg.webhooks, clock, guard=guard)
    # New outbox rows wake the dispatcher at once instead of at its next poll.
    writer.kick = sup.kick = disp.kick
    app = App(cfg, clock, store, writer, subs, sup, disp, engines, token, clock.now_ms())
    app.extras["webhooks"] = disp
    media = app.extras["media"] = _media_downloads(cfg, store, subs, clock, sup, writer, disp)
    # Started after the supervisor (downloads need its clients), stopped before it (a partial
    # download is redone at the next start).
    app.extras.setdefault("on_start", []).append(media.start)
    app.extras.setdefault("on_stop", []).append(media.stop)
    return app


def _media_downloads(cfg, store, subs, clock, sup, writer, disp):
    def client_of(tenant_id: str):
        r = sup.runners.get(tenant_id)
        return None if r is None else (r.client, r.t.state is State.CONNECTED)

    downloads = Downloads(cfg.media, cfg.data_dir, MediaTable(store, subs), clock, client_of)
    downloads.kick = disp.kick
    # A copy of the media oxyd sends itself, kept like incoming media.
    sup.sending.keep_media = lambda tid, msg, data: kept.keep_sent(downloads, tid, msg, data)
    writer.media_cfg = cfg.media
    writer.on_media = downloads.wake
    return downloads


async def start(app: App) -> None:
    app.writer.start()
    await app.webhooks.start()
    for engine in app.engines.values():
        starter = getattr(engine, "start", None)
        if starter is not None:
            await starter()
    await app.supervisor.start()
    for hook in app.extras.get("on_start", ()):
        await hook()


async def stop(app: App) -> None:
    """Tenants stop, queues drain, the database closes last. Returns False when a client
    was stuck and the process should leave through os._exit."""
    grace_s = app.cfg.supervisor.stop_grace_s
    jobs = app.extras.get("jobs")
    if jobs is not None:
        await jobs.stop()
    for hook in app.extras.get("on_stop", ()):
        await hook()
    await app.supervisor.stop()
    try:
        await asyncio.wait_for(app.writer.stop(), app.writer.drain_timeout_s)
    except TimeoutError:
        logger.error(
            "writer could not drain within the grace period; {} rows unwritten", app.writer.depth
        )
    await app.webhooks.stop()
    clean = True
    for engine in app.engines.values():
        try:
            result = await asyncio.wait_for(engine.close(), grace_s + 5)
            clean = clean and result is not False
        except Exception as e:
            logger.error("engine {} did not close: {!r}", engine.name, e)
            clean = False
    await app.store.close()
    return clean
