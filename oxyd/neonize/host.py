"""An engine host: `python -m oxyd.neonize.host DATA_DIR OPTIONS_JSON`.

A child process with its own Go runtime, neonize maps, gate and thread pool, running the
neonize clients of a share of the tenants for the daemon (oxyd/neonize/pool.py). It speaks the
frames of oxyd/neonize/wire.py on its stdin/stdout and knows no Client method by name: a call
names a method of the tenant's NeonizeClient and its plain-data arguments, and the reply is the
plain-data result or the exception. Events leave already translated, in order per tenant
(one writer, one stream).

It never outlives the daemon: stdin closing (the daemon is gone), SIGTERM and the parent-death
signal all stop its clients within the grace period and exit; os._exit ends it even when a Go
thread is stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pathlib
import signal
import sys
from typing import Any

from oxyd.model import Event
from oxyd.neonize import wire
from oxyd.neonize.engine import NeonizeEngine

log = logging.getLogger("oxyd.neonize.host")

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel sends SIGTERM when the daemon dies, even by SIGKILL (stdin closing
    covers the same case elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


class _Out(asyncio.Protocol):
    """The write side of the protocol pipe (flow control: writes pause while the daemon lags)."""

    def __init__(self) -> None:
        self.resumed = asyncio.Event()
        self.resumed.set()

    def pause_writing(self) -> None:
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()


class _In(asyncio.Protocol):
    def __init__(self, server: HostServer) -> None:
        self.server = server
        self.reader = wire.Reader()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except Exception as e:  # a corrupt stream from our own parent: nothing sane follows
            log.error("engine host: bad frame from the daemon: %s", e)
            self.server.finish(70)
            return
        for f in frames:
            self.server.on_frame(f)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.finish(0)  # the daemon is gone or closed us


class HostServer:
    def __init__(self, data_dir: pathlib.Path, options: dict[str, Any]) -> None:
        self.engine = NeonizeEngine(
            data_dir,
            max_tenants=int(options.get("tenants", 64)),
            pair_timeout_s=float(options.get("pair_timeout_s", 180.0)),
            stop_grace_s=float(options.get("stop_grace_s", 10.0)),
            proxy=options.get("proxy"),
        )
        if "connect_hold_s" in options:
            self.engine.connect_hold_s = float(options["connect_hold_s"])
        self.transport: asyncio.WriteTransport | None = None
        self.out: _Out | None = None
        self.tasks: dict[int, asyncio.Task] = {}
        self.events: list[list[Any]] = []
        self.flush_scheduled = False
        self.done: asyncio.Future[int] | None = None
        self.closing = False

    # ---- output: events and replies share one ordered stream ----

    def sink_for(self, tenant_id: str) -> Any:
        def sink(event: Event) -> None:
            self.events.append([tenant_id, event])
            if not self.flush_scheduled:
                self.flush_scheduled = True
                # Batch what arrives in one loop pass into one frame.
                asyncio.get_running_loop().call_soon(self.flush)

        return sink

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.events and self.transport is not None and not self.transport.is_closing():
            items, self.events = self.events, []
            try:
                self.transport.write(wire.frame({"op": "events", "items": items}))
            except Exception:
                log.exception("engine host: cannot encode %d events", len(items))

    def reply(self, data: bytes) -> None:
        self.flush()  # every event produced before the reply goes first
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # ---- input ----

    def on_frame(self, f: dict[str, Any]) -> None:
        op = f.get("op")
        if op == "call":
            call_id = f["id"]
            task = asyncio.ensure_future(self.call(call_id, f))
            self.tasks[call_id] = task
            task.add_done_callback(lambda _t, i=call_id: self.tasks.pop(i, None))
        elif op == "cancel":
            task = self.tasks.get(f.get("id"))
            if task is not None:
                task.cancel()

    async def call(self, call_id: int, f: dict[str, Any]) -> None:
        method = f.get("method")
        try:
            if not isinstance(method, str) or method.startswith("_"):
                raise AttributeError(f"no method {method!r}")
            tenant = f.get("tenant")
            if tenant is None:
                target: Any = self
                method = f"host_{method}"
            else:
                target = self.engine.client(tenant, self.sink_for(tenant))
            fn = getattr(target, method)
            result = fn(*f.get("args") or (), **f.get("kwargs") or {})
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            data = wire.frame({"op": "result", "id": call_id, "value": result})
        except asyncio.CancelledError:
            return  # the daemon withdrew the call and is not waiting for a reply
        except Exception as e:
            if not isinstance(e, wire.engine_module.EngineError):
                log.warning("engine host: %s failed: %r", method, e)
            data = wire.error_frame(call_id, e)
        self.reply(data)

    # ---- host-level calls (tenant None) ----

    async def host_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    async def host_resources(self) -> dict[str, int]:
        res = self.engine.resources()
        res["tenants"] = self.engine.live_count()
        return res

    async def host_close(self) -> bool:
        """Stop every client (the daemon is shutting down or recycling this host)."""
        self.closing = True
        clean = await self.engine.close()
        asyncio.get_running_loop().call_soon(self.finish, 0 if clean else 75)
        return clean

    # ---- life ----

    def finish(self, rc: int) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(rc)

    async def serve(self, proto_out: int) -> int:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        await self.engine.start()
        self.out = _Out()
        self.transport, _ = await loop.connect_write_pipe(
            lambda: self.out, os.fdopen(proto_out, "wb", buffering=0)
        )
        await loop.connect_read_pipe(lambda: _In(self), os.fdopen(0, "rb", buffering=0))
        loop.add_signal_handler(signal.SIGTERM, self.finish, 0)
        rc = await self.done
        if not self.closing:
            # Stdin closed or SIGTERM: stop the clients so Go closes its stores, bounded.
            with contextlib.suppress(Exception):
                if not await asyncio.wait_for(self.engine.close(), self.engine.stop_grace_s + 2):
                    rc = rc or 75
        self.flush()
        return rc


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m oxyd.neonize.host DATA_DIR OPTIONS_JSON\n")
        os._exit(2)
    options = json.loads(argv[1])
    die_with_parent(int(options.get("parent_pid") or os.getppid()))
    # The protocol owns the real stdout; anything else that writes to fd 1 (Go, a stray print)
    # lands on stderr instead of corrupting the frames.
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Before neonize's import runs basicConfig; the daemon keeps our last stderr line.
    logging.basicConfig(
        level=options.get("log_level", "WARNING"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon, which stops us
    rc = 1
    loop = asyncio.new_event_loop()  # not asyncio.run: its executor shutdown waits on Go threads
    try:
        server = HostServer(pathlib.Path(argv[0]), options)
        rc = loop.run_until_complete(server.serve(proto_out))
    except BaseException as e:
        sys.stderr.write(f"engine host failed: {type(e).__name__}: {e}\n")
    sys.stderr.flush()
    os._exit(rc)  # never wait for Go threads at interpreter exit


if __name__ == "__main__":
    main(sys.argv[1:])
