"""Helpers of the reliability suite: the real `oxyd run` process driven over HTTP from an
asyncio test, a real webhook receiver, database reads of a dead process, polling with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from helpers import free_port, until  # shared with tests/; re-exported for this suite

__all__ = ["free_port", "until"]

LONG = os.environ.get("OXYD_LONG", "") == "1"
TOKEN = "reliability-admin-token-0123456789"
SECRET = "reliability-webhook-secret"


def scale(short: Any, long: Any) -> Any:
    """The short figure in CI, the full one with OXYD_LONG=1."""
    return long if LONG else short


def daemon_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXYD_")}
    env.update(
        {
            "OXYD_DATA_DIR": str(data_dir),
            "OXYD_HTTP_PORT": str(port),
            "OXYD_ADMIN_TOKEN": TOKEN,
            "OXYD_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


class Daemon:
    """The real `python -m oxyd run`, driven over HTTP with aiohttp (the test's loop stays free
    to serve the webhook receiver)."""

    def __init__(self, data_dir: Path, *, prefix: list[str] | None = None, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = env
        self.prefix = prefix or []  # e.g. setpriv, to drop root's file-permission override
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []
        self._log = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        self._close_log()
        path = self.data_dir.parent / f"oxyd-{self.port}-{time.time_ns()}.log"
        self.logs.append(path)
        self._log = open(path, "w")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "oxyd", "run"],
            env=daemon_env(self.data_dir, self.port, **self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(self.data_dir.parent),
        )

    async def start(self, timeout_s: float = 30.0) -> Daemon:
        self._spawn()
        if self._http is None:
            self._http = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=aiohttp.ClientTimeout(total=10),
            )

        async def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"oxyd exited with {self.proc.returncode}:\n{self.log_text()}")
            return (await self.call("GET", "/healthz"))[0] == 200

        await until(up, timeout_s, "daemon up", step_s=0.05)
        return self

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._http is not None
        try:
            async with self._http.request(method, self.base + path, json=body) as r:
                raw = await r.read()
                try:
                    return r.status, json.loads(raw) if raw else None
                except ValueError:
                    return r.status, raw.decode(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0, None

    async def states(self) -> dict[str, str]:
        code, body = await self.call("GET", "/v1/tenants")
        return {t["id"]: t["state"] for t in body["tenants"]} if code == 200 else {}

    async def tenants(self) -> dict[str, dict[str, Any]]:
        code, body = await self.call("GET", "/v1/tenants")
        assert code == 200, body
        return {t["id"]: t for t in body["tenants"]}

    def kill(self) -> None:
        """SIGKILL: no goodbye, no drain."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()

    async def term(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, timeout_s)
        self._close_log()
        return code

    async def close(self) -> None:
        self.kill()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self, last_chars: int = 6000) -> str:
        self._close_log()
        return "".join(p.read_text(errors="replace") for p in self.logs)[-last_chars:]


class Receiver:
    """A real webhook receiver on 127.0.0.1 (aiohttp, in the test process). Records every
    event body it answered 200 to."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.events.append(json.loads(raw))
        return web.Response(text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def read_db(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """One query on oxyd.sqlite3 with the stdlib driver (use it on a dead process, or read-only
    beside a live one: WAL lets it read the last commit)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def tree(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every path under `root` (except under `skip`) with its type, size and mtime."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if skip is not None and (d == skip or skip in d.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if skip is not None and p == skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
