"""A failure while starting exits at once (1), with the store closed: never up-but-silent."""

import asyncio

from helpers import config, free_port

from oxyd import daemon


async def test_a_start_failure_returns_1_and_closes_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("OXYD_ADMIN_TOKEN", "admin-token-for-tests-0123456789")
    cfg = config(tmp_path, http_port=str(free_port()))
    opened = {}
    real_start = daemon.start

    async def failing_start(app):
        opened["app"] = app
        await real_start(app)
        raise PermissionError(13, "Permission denied", "tenants/x/media/.partial")

    monkeypatch.setattr(daemon, "start", failing_start)
    code = await asyncio.wait_for(daemon.run(cfg), 60)
    assert code == 1
    app = opened["app"]
    assert app.store.closed and not app.supervisor.running
    # The lock and the port were released: a second run gets past both.
    monkeypatch.setattr(daemon, "start", real_start)
    from oxyd import dirlock

    with dirlock.acquire(cfg.data_dir):
        pass
