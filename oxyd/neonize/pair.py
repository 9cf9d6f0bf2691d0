"""Pairing in a short-lived child process: `python -m oxyd.neonize.pair STORE UUID [PHONE]`.

An abandoned whatsmeow QR login can leave a Go thread blocked forever, so the daemon never runs
one itself. The child connects an empty store, prints one JSON object per line on stdout and
exits (os._exit, so a stuck Go thread cannot hold it):

  {"event": "qr", "code": str, "timeout_s": n}   each (rotating) QR payload
  {"event": "code", "code": str}                   the phone pairing code (with PHONE)
  {"event": "success", "jid": str}                 the device is paired and saved
  {"event": "error", "reason": str}                pairing cannot go on

The parent side (PairingRun) turns the lines into PairQR / PairCode / PairSuccess / PairFailed
and kills the child's process group when `timeout_s` passes. After PairSuccess the store holds
the device and the tenant's own client connects normally (history sync arrives there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from oxyd.model import Event, PairCode, PairFailed, PairQR, PairSuccess
from oxyd.neonize.device import store_dsn
from oxyd.neonize.jids import jid_str
from oxyd.neonize.library import quiet_neonize_logs

log = logging.getLogger("oxyd.neonize")

# whatsmeow shows the first QR for 60 s and each later one for 20 s.
FIRST_QR_S = 60
NEXT_QR_S = 20
PAIR_CODE_S = 180
# Hard cap for a child whose parent cannot kill it (pairing never takes this long).
MAX_CHILD_S = 900
# The tenant's proxy (or neonize.proxy): pairing dials WhatsApp the same way its sessions do.
PROXY_ENV = "NEONIZE_PAIR_PROXY"


class PairingRun:
    """Parent side: one pairing child, its lines translated to events on the loop."""

    def __init__(
        self,
        *,
        argv: list[str],
        emit: Callable[[Event], None],
        now_ms: Callable[[], int],
        timeout_s: float,
        label: str,
        proxy: str | None = None,
    ) -> None:
        self.argv = argv
        self.proxy = proxy
        self.emit = emit
        self.now_ms = now_ms
        self.timeout_s = timeout_s
        self.label = label
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task | None = None
        self._stderr_tail: list[str] = []

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self) -> None:
        env = None
        if self.proxy:  # not in argv: a proxy URL may hold a password
            env = {**os.environ, PROXY_ENV: self.proxy}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed with every thread
        )
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def cancel(self) -> None:
        """Stop pairing without an event (the caller asked for it)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self._kill()

    async def _run(self) -> None:
        assert self.proc is not None
        started_ms = self.now_ms()
        deadline_ms = started_ms + int(self.timeout_s * 1000)
        drain = asyncio.ensure_future(self._drain_stderr())
        outcome: Event | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                outcome = await self._read_lines(deadline_ms)
                await self.proc.wait()
        except TimeoutError:
            outcome = outcome or PairFailed(reason="timeout")
        finally:
            await self._kill()
            # Read both pipes to EOF so their transports close now, not at GC time.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(self.proc.stdout.read(), drain), 2.0)
            drain.cancel()
        if outcome is None:
            tail = self._stderr_tail[-1] if self._stderr_tail else ""
            reason = f"pairing process exited with code {self.proc.returncode}"
            outcome = PairFailed(reason=f"{reason}: {tail}" if tail else reason)
        log.info("neonize %s: pairing ended: %s", self.label, outcome)
        self.emit(outcome)

    async def _read_lines(self, deadline_ms: int) -> Event | None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                obj = json.loads(line)
                kind = obj["event"]
            except (ValueError, KeyError, TypeError):
                continue
            now = self.now_ms()
            if kind == "qr":
                ttl_ms = int(obj.get("timeout_s", NEXT_QR_S) * 1000)
                self.emit(PairQR(code=str(obj["code"]), expires_ms=min(now + ttl_ms, deadline_ms)))
            elif kind == "code":
                expires = min(now + PAIR_CODE_S * 1000, deadline_ms)
                self.emit(PairCode(code=str(obj["code"]), expires_ms=expires))
            elif kind == "success":
                return PairSuccess(jid=str(obj["jid"]), push_name=obj.get("push_name") or None)
            elif kind == "error":
                return PairFailed(reason=str(obj.get("reason") or "pairing failed")[:500])
        return None

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                self._stderr_tail = [*self._stderr_tail[-19:], text]
                log.debug("neonize %s pairing: %s", self.label, text)

    async def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# ---- child side ----


def _say(**obj: object) -> None:
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        os._exit(3)  # the daemon is gone: nobody can show a QR any more


async def _watch_parent(parent_pid: int, limit_s: float) -> None:
    # The parent normally kills us on timeout; this covers a parent that was SIGKILLed.
    deadline = time.monotonic() + limit_s
    while os.getppid() == parent_pid and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    os._exit(3)


async def _pair(store: str, uuid: str, phone: str | None) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=8))
    quiet_neonize_logs()
    from neonize.aioze import events as nev
    from neonize.aioze.client import NewAClient

    nev.event_global_loop = loop
    watcher = asyncio.ensure_future(_watch_parent(os.getppid(), MAX_CHILD_S))
    nc = NewAClient(store_dsn(store), uuid=uuid)
    done: asyncio.Future[int] = loop.create_future()
    qr_count = 0

    def finish(rc: int, **obj: object) -> None:
        if not done.done():
            _say(**obj)
            done.set_result(rc)

    async def on_qr(_c: object, data: bytes) -> None:
        nonlocal qr_count
        qr_count += 1
        _say(event="qr", code=data.decode(), timeout_s=FIRST_QR_S if qr_count == 1 else NEXT_QR_S)
        if phone and qr_count == 1:  # PairPhone works only once the QR login runs
            try:
                _say(event="code", code=await nc.PairPhone(phone, True))
            except Exception as e:
                finish(1, event="error", reason=f"pair phone: {e}")

    async def on_pair(_c: object, ev: object) -> None:
        if int(ev.Status) == 2:  # type: ignore[attr-defined]
            finish(0, event="success", jid=jid_str(ev.ID))  # type: ignore[attr-defined]
        else:
            finish(1, event="error", reason=ev.Error or "pairing refused")  # type: ignore[attr-defined]

    async def on_connected(_c: object, _ev: object) -> None:
        me = nc.me
        jid = jid_str(me.JID) if me is not None and me.HasField("JID") else None
        finish(0, event="success", jid=jid, push_name=me.PushName if me else None)

    async def on_refused(_c: object, ev: object) -> None:
        finish(1, event="error", reason=f"{type(ev).__name__}: {ev}".strip())

    nc.qr(on_qr)
    nc.event(nev.PairStatusEv)(on_pair)
    nc.event(nev.ConnectedEv)(on_connected)
    for refused in (
        nev.LoggedOutEv,
        nev.ConnectFailureEv,
        nev.TemporaryBanEv,
        nev.ClientOutdatedEv,
        nev.StreamReplacedEv,
    ):
        nc.event(refused)(on_refused)
    proxy = os.environ.get(PROXY_ENV)
    if proxy:
        from neonize._binder import ProxySettings

        task = await nc.connect(ProxySettings(proxy_address=proxy))
    else:
        task = await nc.connect()
    await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
    if not done.done():
        exc = task.exception() if not task.cancelled() else None
        finish(1, event="error", reason=str(exc) if exc else "connection ended")
    # Let Go close the socket and the store; os._exit below covers a Stop that never returns.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.stop(), timeout=3.0)
    watcher.cancel()
    return done.result()


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: python -m oxyd.neonize.pair STORE UUID [PHONE]\n")
        os._exit(2)
    # Before neonize's import runs basicConfig: its INFO lines must not reach stdout.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rc = 1
    loop = asyncio.new_event_loop()  # not asyncio.run: its executor shutdown waits on Go threads
    try:
        rc = loop.run_until_complete(_pair(argv[0], argv[1], argv[2] if len(argv) == 3 else None))
    except BaseException as e:
        _say(event="error", reason=f"{type(e).__name__}: {e}")
    sys.stdout.flush()
    os._exit(rc)  # never wait for Go threads at interpreter exit


if __name__ == "__main__":
    main(sys.argv[1:])
