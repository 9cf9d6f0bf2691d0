"""The real neonize binary without WhatsApp: a proxy on 127.0.0.1 that answers 502 after a delay
(every connect fails there, no DNS lookup leaves the machine) and device stores made by neonize
itself with a fake paired device row (the client then takes the logged-in path and dials).

Used by the engine-host tests and by bench/neonize_scale.py.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import threading

FAKE_JID = "15550001234:7@s.whatsapp.net"

_SCHEMA_SCRIPT = r"""
import asyncio, logging, os, sys
logging.basicConfig(level=logging.ERROR)
from oxyd.neonize.engine import import_neonize, quiet_neonize_logs
from oxyd.neonize.client import store_dsn
import_neonize(); quiet_neonize_logs()
from neonize.aioze import events
from neonize.aioze.client import NewAClient
from neonize._binder import ProxySettings

async def main():
    events.event_global_loop = asyncio.get_running_loop()
    nc = NewAClient(store_dsn(sys.argv[1]), uuid="oxyd-schema")
    task = await nc.connect(ProxySettings(proxy_address=sys.argv[2]))
    try:
        await asyncio.wait_for(task, 20)
    except BaseException:
        pass
asyncio.new_event_loop().run_until_complete(main())
os._exit(0)
"""


# An engine host that can also feed events through neonize's real dispatch entry point from a
# foreign thread, as Go does (host-level calls `prepare(tenant, n)` then `feed()`).
_FEEDING_HOST = r"""
import ctypes, sys, threading
sys.path.insert(0, sys.argv.pop(1))
from neonize_fakes import build_events
from oxyd.neonize import host

class FeedingHost(host.HostServer):
    async def host_prepare(self, tenant, n, prefix="B"):
        self.payloads = build_events(n, prefix)
        self.fed = self.engine.client(tenant, self.sink_for(tenant))
        return n

    async def host_feed(self):
        nc = self.fed.native()
        def feed():
            for data, code in self.payloads:
                buf = ctypes.create_string_buffer(data, len(data))
                nc.event.execute(nc.uuid, ctypes.addressof(buf), len(data), code)
        threading.Thread(target=feed, daemon=True).start()
        return True

host.HostServer = FeedingHost
host.main(sys.argv[1:])
"""


def feeding_host_argv() -> list[str]:
    return [sys.executable, "-c", _FEEDING_HOST, str(pathlib.Path(__file__).resolve().parent)]


def build_events(n: int, prefix: str = "B") -> list[tuple[bytes, int]]:
    """n neonize Message events (serialized, with their event code), ids f"{prefix}{i:08d}"."""
    from neonize.events import EVENT_TO_INT
    from neonize.proto import Neonize_pb2 as npb
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    chat = npb.JID(User="4915111111111", Server="s.whatsapp.net", RawAgent=0, Device=0)
    out = []
    for i in range(n):
        src = npb.MessageSource(Chat=chat, Sender=chat, IsFromMe=False, IsGroup=False)
        info = npb.MessageInfo(
            ID=f"{prefix}{i:08d}",
            Timestamp=1_700_000_000_000 + i,
            MessageSource=src,
            Pushname="Ann",
        )
        ev = npb.Message(Info=info, Message=e2e.Message(conversation=f"message number {i}"))
        out.append((ev.SerializePartialToString(), EVENT_TO_INT[npb.Message]))
    return out


class DelayProxy:
    """An HTTP proxy on 127.0.0.1 that reads the CONNECT request, waits `delay_s` and answers
    502: the connect fails after exactly that delay. Runs on its own thread and loop, so the
    process under test cannot slow it down (nor it the process)."""

    def __init__(self, delay_s: float = 0.3) -> None:
        self.delay_s = delay_s
        self.connects = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="delay-proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            self.connects += 1
            await asyncio.sleep(self.delay_s)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()


def make_template(folder: pathlib.Path, proxy_url: str) -> pathlib.Path:
    """A store whose schema neonize created (one proxied connect in a child process, so no Go
    runtime here holds it), with a fake paired device row added."""
    path = folder / "template.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    subprocess.run(
        [sys.executable, "-c", _SCHEMA_SCRIPT, str(path), proxy_url],
        check=True,
        timeout=60,
        cwd=folder,
        env=env,
        capture_output=True,
    )
    con = sqlite3.connect(path)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(whatsmeow_device)")]
        values = {
            "jid": FAKE_JID,
            "registration_id": 1,
            "noise_key": os.urandom(32),
            "identity_key": os.urandom(32),
            "signed_pre_key": os.urandom(32),
            "signed_pre_key_id": 1,
            "signed_pre_key_sig": os.urandom(64),
            "adv_key": os.urandom(32),
            "adv_details": b"x",
            "adv_account_sig": os.urandom(64),
            "adv_account_sig_key": os.urandom(32),
            "adv_device_sig": os.urandom(64),
            "platform": "",
            "business_name": "",
            "push_name": "Fake",
            "facebook_uuid": None,
            "lid": None,
        }
        use = [c for c in cols if c in values]
        con.execute(
            f"INSERT INTO whatsmeow_device ({', '.join(use)}) VALUES ({', '.join('?' * len(use))})",
            [values[c] for c in use],
        )
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return path


def install_store(template: pathlib.Path, data_dir: pathlib.Path, tenant_id: str) -> pathlib.Path:
    """A copy of the fake paired store as the tenant's device store."""
    folder = data_dir / "tenants" / tenant_id
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    dst = folder / "whatsmeow.sqlite3"
    shutil.copyfile(template, dst)
    return dst


def fds_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def rss_mb_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return -1.0
