"""The status page in a real headless Chromium against the real `oxyd run` process.

Chromium comes from the system (Debian's `chromium` package) and is driven over the DevTools
protocol with aiohttp's websocket client: nothing is downloaded at run time. The screenshots
are kept in artifacts/ at the repository root.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
TOKEN = "admin-token-for-the-browser-test-0123"
CHROMIUM = next(
    (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """One browser tab over a flattened DevTools session on the browser's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.session = ws, None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.problems: list[str] = []  # CSP violations and uncaught exceptions
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            fut = self.pending.pop(data.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(data["params"]["exceptionDetails"])[:500])
            elif data.get("method") == "Log.entryAdded":
                text = data["params"]["entry"].get("text", "")
                if "Content Security Policy" in text or "Trusted Type" in text:
                    self.problems.append(text)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        fut = self.pending[msg_id] = asyncio.get_running_loop().create_future()
        msg = {"id": msg_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        await self.ws.send_str(json.dumps(msg))
        data = await asyncio.wait_for(fut, 15)
        if "error" in data:
            raise RuntimeError(f"{method}: {data['error']}")
        return data["result"]

    async def open(self) -> None:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    async def js(self, expression: str) -> Any:
        r = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression!r} threw: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def screenshot(self, path: Path, width: int, height: int, mobile: bool) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )
        await self.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={
                "x": 0,
                "y": 0,
                "width": width,
                "scale": 1,
                "height": max(height, int(size["height"])),
            },
        )
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


@pytest.fixture
async def daemon(tmp_path) -> AsyncIterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "OXYD_DATA_DIR": str(tmp_path / "data"),
        "OXYD_HTTP_PORT": str(port),
        "OXYD_ADMIN_TOKEN": TOKEN,
        "OXYD_SIMULATOR_CONNECT_LATENCY_MS": "800",
        "OXYD_SIMULATOR_PAIR_AFTER_MS": "2500",
        "OXYD_SUPERVISOR_STOP_GRACE_S": "2",
    }
    env.pop("OXYD_CONFIG", None)
    log = (tmp_path / "oxyd.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oxyd", "run", env=env, stdout=log, stderr=log, cwd=tmp_path
    )
    base = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"oxyd exited: {(tmp_path / 'oxyd.log').read_text()[-2000:]}")
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as s, s.get(f"{base}/healthz") as r:
                return r.status == 200
        return False

    try:
        await until(healthy, 20, "oxyd to answer /healthz")
        yield base
        # The browser still holds an event stream open: it must not delay the stop.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert time.monotonic() - started < 10, "an open event stream held up the stop"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


@pytest.fixture
async def browser(tmp_path) -> AsyncIterator[Page]:
    if CHROMIUM is None:
        pytest.skip(
            "no chromium binary found: install Debian's `chromium` package "
            "(apt-get install -y chromium) to run the status page's browser test"
        )
    profile = tmp_path / "chromium"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    active = profile / "DevToolsActivePort"
    try:
        lines = await until(
            lambda: (active.exists() and active.read_text().split()) or None,
            20,
            "Chromium's DevToolsActivePort file",
        )
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_msg_size=0) as ws,
        ):
            page = Page(ws)
            await page.open()
            yield page
            with contextlib.suppress(Exception):
                await page.send("Browser.close")
            page.reader.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def api(base: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, base + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r,
    ):
        assert r.status < 300, f"{method} {path}: {r.status} {await r.text()}"
        return await r.json()


CARDS = """Object.fromEntries([...document.querySelectorAll('#tenants > li')].map(li =>
  [li.dataset.id, li.dataset.state + ':' + li.querySelector('.state').textContent]))"""
SEEN = """window.__seen = []; window.__same_page = true;
new MutationObserver(ms => ms.forEach(m => __seen.push(m.target.dataset.id + ':' +
  m.target.dataset.state))).observe(document.querySelector('#tenants'),
  {subtree: true, attributes: true, attributeFilter: ['data-state']}); true"""


async def test_status_page_in_a_real_browser(daemon, browser):
    base, page = daemon, browser
    async with aiohttp.ClientSession() as s, s.get(base + "/") as r:
        assert r.status == 200, "GET / is not served: http.make_app must call page.setup(web_app)"
    for tid in ("alpha", "beta", "gamma", "delta"):
        await api(base, "POST", "/v1/tenants", {"id": tid, "engine": "simulator"})

    async def states() -> dict[str, str]:
        return {t["id"]: t["state"] for t in (await api(base, "GET", "/v1/tenants"))["tenants"]}

    await until(lambda: _all_connected(states), 15, "tenants up")
    await api(base, "POST", "/v1/tenants/gamma/logout")
    await api(base, "POST", "/v1/tenants/delta/simulate", {"action": "replace"})
    await until(lambda: _state_is(states, "delta", "conflict"), 10, "delta in conflict")

    # Log in: the page asks for the token once.
    await page.send("Page.navigate", url=base + "/")
    await until(
        lambda: page.js("!!document.querySelector('#login:not([hidden]) #token')"),
        10,
        "the login form",
    )
    await page.js("document.querySelector('#token').focus()")
    await page.send("Input.insertText", text=TOKEN)
    await page.js("document.querySelector('#login-form button[type=submit]').click(), true")
    want = {
        "alpha": "connected:Connected",
        "beta": "connected:Connected",
        "gamma": "logged_out:Logged out",
        "delta": "conflict:Conflict",
    }
    await until(lambda: _equals(page.js(CARDS), want), 10, "every tenant on the page")
    assert await page.js("location.href") == base + "/", "the token must never be in the URL"
    assert await page.js("sessionStorage.getItem('oxyd.token')") == TOKEN
    await until(
        lambda: _equals(page.js("document.querySelector('#live').textContent"), "● Live"),
        10,
        "the live feed",
    )
    todo = await page.js("document.querySelector('[data-id=delta] .todo').textContent")
    assert "another client uses this session" in todo
    await until(lambda: page.js("!document.querySelector('#health').hidden"), 10, "health")

    # A simulated drop shows up in place, without reloading the page.
    await page.js(SEEN)
    await api(base, "POST", "/v1/tenants/alpha/simulate", {"action": "disconnect"})
    await until(lambda: _has(page.js("__seen"), "alpha:reconnecting"), 10, "alpha reconnecting")
    await until(lambda: _has(page.js("__seen"), "alpha:connected"), 10, "alpha back")

    # Restart with the page's button.
    since = (await api(base, "GET", "/v1/tenants/beta"))["state_since_ms"]
    await page.js("document.querySelector('[data-id=beta] button[data-act=restart]').click(), 1")
    await until(lambda: _has(page.js("__seen"), "beta:connecting"), 10, "beta restarting")
    await until(lambda: _has(page.js("__seen"), "beta:connected"), 10, "beta reconnected")
    assert (await api(base, "GET", "/v1/tenants/beta"))["state_since_ms"] > since

    # Pair from the browser: the QR code appears as an image, then the tenant connects.
    await page.js("document.querySelector('[data-id=gamma] button[data-act=pair]').click(), 1")
    await page.js("document.querySelector('[data-id=gamma] .pair-form button').click(), 1")
    qr = "document.querySelector('[data-id=gamma] .qr img')"
    await until(
        lambda: page.js(f"{qr}.src.startsWith('blob:') && {qr}.naturalWidth > 100"),
        10,
        "the QR code image",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(ARTIFACTS / "status-page.png", 1280, 900, mobile=False)
    await page.screenshot(ARTIFACTS / "status-page-phone.png", 390, 844, mobile=True)
    await page.send("Emulation.clearDeviceMetricsOverride")
    await until(lambda: _has(page.js("__seen"), "gamma:connected"), 15, "gamma paired")
    assert await page.js("document.querySelector('[data-id=gamma] .pair').hidden")
    assert await page.js("window.__same_page") is True, "the page reloaded"
    assert not page.problems, page.problems


async def _all_connected(states) -> bool:
    return all(s == "connected" for s in (await states()).values())


async def _state_is(states, tid: str, state: str) -> bool:
    return (await states()).get(tid) == state


async def _equals(value, want) -> bool:
    return await value == want


async def _has(value, item) -> bool:
    return item in (await value or [])
