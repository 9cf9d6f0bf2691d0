"""`oxyd run`: the App, the scheduled jobs and the control port, unwound in reverse.

The data directory's lock comes first and the port is bound before any tenant starts; at the
end HTTP stops first (no new work), then the App stops its tenants and drains its queues.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal

from loguru import logger

from oxyd import backup, dirlock, preflight
from oxyd.app import App, build, start, stop
from oxyd.cluster import wiring as cluster
from oxyd.config import EXIT_CONFIG, Config
from oxyd.http import server as http
from oxyd.jobs import Jobs
from oxyd.media import retention
from oxyd.notify import Notifier


async def run(cfg: Config) -> int:
    """The daemon. Returns the exit code."""
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info("{} received: shutting down (send it again to force)", signame)
            stop_event.set()
        else:
            logger.warning("second signal: exiting now")
            os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    notifier = Notifier()
    found = preflight.problems(cfg)  # the same checks as `oxyd check-config`
    if found:
        for problem in found:
            logger.error("config error: {}", problem)
        return EXIT_CONFIG
    key = None
    try:
        key = backup.load_key(cfg)
    except backup.BackupError:
        pass  # no key configured (preflight refused a bad one): no scheduled backups

    # The lock before anything in the directory is opened; the port before any tenant starts.
    try:
        lock = dirlock.acquire(cfg.data_dir)
    except dirlock.DirectoryInUse as e:
        logger.error("{}", e)
        return dirlock.EXIT_IN_USE
    try:
        socks = http.bind(cfg.http.host, cfg.http.port)
    except OSError as e:
        logger.error("{}", e)
        lock.release()
        return 1
    try:
        return await _run_locked(cfg, socks, stop_event, key, notifier)
    finally:
        for sock in socks:  # served sockets are closed by the server already; this is for a
            sock.close()  # start-up that failed before serving them
        lock.release()


async def _run_locked(cfg: Config, socks: list, stop_event: asyncio.Event, key, notifier) -> int:
    app = await build(cfg)
    logger.info("data directory {}", cfg.data_dir.resolve())
    try:
        return await _serve(cfg, app, socks, stop_event, key, notifier)
    except Exception as e:
        # A start-up failure must exit at once: left open, the database's and the engines'
        # threads would keep the process alive (up but never serving) until a SIGKILL.
        logger.opt(exception=e).error("cannot start: {}", e)
        try:
            await asyncio.wait_for(stop(app), cfg.supervisor.stop_grace_s + 30)
        except Exception as close_error:
            logger.error("closing after the failed start: {!r}", close_error)
            os._exit(1)
        return 1


async def _serve(cfg: Config, app: App, socks: list, stop_event, key, notifier) -> int:
    if cfg.cluster.enabled:
        await cluster.attach(app)  # before any tenant starts: it decides which ones may
    await start(app)
    make_backup = None
    if key is not None:

        def make_backup():
            return backup.create_backup(cfg.data_dir, key, clock=app.clock, media=cfg.backup.media)

    jobs = Jobs(
        cfg,
        store=app.store,
        health_sweep=app.supervisor.health_sweep,
        make_backup=make_backup,
        prune_outbox=app.webhooks.prune,
        media_sweep=functools.partial(_media_sweep, app),
        clock=app.clock,
    )
    jobs.start()
    app.extras["jobs"] = jobs
    runner = await http.serve(app, socks)
    logger.info("listening on http://{}:{}", cfg.http.host, cfg.http.port)
    notifier.ready(_status_line(app))
    side_tasks = [
        asyncio.create_task(notifier.watchdog_loop()),
        asyncio.create_task(_status_loop(app, notifier)),
    ]
    await stop_event.wait()

    notifier.stopping("draining queues")
    for t in side_tasks:
        t.cancel()
    await runner.cleanup()  # HTTP first: no new work while we drain
    clean = await stop(app)
    logger.info("stopped")
    if not clean:
        logger.warning("a WhatsApp client thread is stuck; leaving without waiting for it")
        os._exit(0)
    return 0


async def _media_sweep(app: App) -> dict:
    downloads = app.extras["media"]
    return await retention.sweep(
        app.cfg.media, app.cfg.data_dir, downloads.table, downloads, app.clock
    )


def _status_line(app: App) -> str:
    counts = app.supervisor.counts_by_state()
    return f"{sum(counts.values())} tenants, {counts.get('connected', 0)} connected"


async def _status_loop(app: App, notifier: Notifier, every_s: float = 30.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        notifier.status(_status_line(app))
