"""The container image, as far as it can be tested without a Docker engine: the Dockerfile's
facts, the compose example, and its HEALTHCHECK and CMD run for real on this machine."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, rest in instructions():
        if op == "ENV":
            env.update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
    return env


def exec_form(rest: str) -> list[str]:
    return json.loads(rest[rest.index("[") :])


def test_dockerfile_facts():
    ins = instructions()
    ops = [op for op, _ in ins]
    get = {op: rest for op, rest in ins}  # the last one of each wins, as in Docker
    assert get["FROM"].startswith("python:3.11-slim")
    assert get["USER"].split(":")[0] not in ("root", "0")
    assert get["VOLUME"] == "/data"
    assert get["EXPOSE"] == "8780"
    assert get["STOPSIGNAL"] == "SIGTERM"
    assert exec_form(get["CMD"]) == ["oxyd", "run"]
    assert image_env()["OXYD_DATA_DIR"] == "/data"
    assert image_env()["OXYD_HTTP_HOST"] == "0.0.0.0"
    health = get["HEALTHCHECK"]
    assert exec_form(health) == ["python", "-m", "oxyd.healthcheck"]
    assert "curl" not in DOCKERFILE and "wget" not in DOCKERFILE
    # Dependencies in a cached layer: pyproject.toml is installed before the source is copied.
    copies = [rest for op, rest in ins if op == "COPY"]
    assert copies[0].startswith("pyproject.toml")
    first_install = next(i for i, (op, rest) in enumerate(ins) if op == "RUN" and "pip" in rest)
    source_copy = next(i for i, (op, rest) in enumerate(ins) if op == "COPY" and "oxyd" in rest)
    assert first_install < source_copy
    assert ops.index("USER") < ops.index("CMD")


def test_dockerignore_keeps_state_and_history_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "data", "*.oxydbak"):
        assert entry in ignored


def test_compose_example():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = doc["services"]["oxyd"]
    assert svc["ports"] == ["127.0.0.1:8780:8780"]
    volume, _, target = svc["volumes"][0].partition(":")
    assert target == "/data" and volume in doc["volumes"]
    assert int(svc["stop_grace_period"].rstrip("s")) > 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def healthcheck(port: int, *args: str) -> tuple[int, str]:
    env = {"PATH": os.environ.get("PATH", ""), "OXYD_HTTP_PORT": str(port)}
    env["OXYD_HTTP_HOST"] = "0.0.0.0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oxyd.healthcheck", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode()


async def serve(status: int, body: dict) -> tuple[web.AppRunner, int]:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_healthcheck_against_a_live_server():
    runner, port = await serve(200, {"status": "ok"})
    try:
        code, out = await healthcheck(port)
        assert code == 0, out
        assert "healthy" in out
    finally:
        await runner.cleanup()
    code, out = await healthcheck(port)  # nothing listens any more
    assert code == 1
    assert "unhealthy" in out


async def test_healthcheck_fails_on_an_error_status():
    runner, port = await serve(503, {"status": "starting"})
    try:
        code, out = await healthcheck(port)
    finally:
        await runner.cleanup()
    assert code == 1 and "503" in out


@pytest.mark.e2e
async def test_image_command_and_healthcheck_on_the_real_daemon(tmp_path):
    """CMD with the image's environment (data dir moved to tmp_path): it starts, the
    HEALTHCHECK passes, and SIGTERM stops it cleanly."""
    port = free_port()
    env = {**image_env(), "OXYD_DATA_DIR": str(tmp_path / "data"), "OXYD_HTTP_PORT": str(port)}
    env["PATH"] = os.environ.get("PATH", "")
    cmd = exec_form(dict(instructions())["CMD"])
    assert cmd[0] == "oxyd"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oxyd", *cmd[1:], env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            code, out = await healthcheck(port)
            if code == 0:
                break
            assert proc.returncode is None, (await proc.stderr.read()).decode()
            assert time.monotonic() < deadline, out
            await asyncio.sleep(0.1)
        assert (tmp_path / "data" / "admin.token").exists()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
