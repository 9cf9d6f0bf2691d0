"""Figures for the neonize engine, offline (not run in CI).

  .venv/bin/python bench/neonize_dispatch.py [--events 50000] [--retry-s 10]
  .venv/bin/python bench/neonize_dispatch.py --quick   # 5,000 events, no retry part

(Part 2's connects go to a proxy on 127.0.0.1 that answers 502 after 300 ms: nothing leaves
the machine.)

1. Dispatch throughput of the real neonize path: protobuf events handed to
   `client.event.execute(...)` from a foreign thread (as Go does), through neonize's
   run_coroutine_threadsafe, our handler and translation, into the sink.
2. RSS and open file descriptors with 0, 20 and 100 offline tenants retrying connects (each
   attempt fails at the local proxy; whatsmeow leaks a handle per connect, see the notes'
   hazard 5). bench/neonize_scale.py measures the same on fake-paired stores, with hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import pathlib
import sys
import tempfile
import threading
import time

# Running `python bench/x.py` puts bench/ first on sys.path, where bench/http.py shadows the
# stdlib http package that neonize's imports need.
if (
    sys.path
    and pathlib.Path(sys.path[0] or ".").resolve() == pathlib.Path(__file__).resolve().parent
):
    sys.path.pop(0)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from neonize_fakes import DelayProxy

from oxyd import model
from oxyd.neonize.engine import NeonizeEngine, import_neonize, process_resources


def build_events(n: int) -> list[tuple[bytes, int]]:
    from neonize.events import EVENT_TO_INT
    from neonize.proto import Neonize_pb2 as npb
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    chat = npb.JID(
        User="4915111111111", Server="s.whatsapp.net", RawAgent=0, Device=0, Integrator=0
    )
    out = []
    for i in range(n):
        src = npb.MessageSource(Chat=chat, Sender=chat, IsFromMe=False, IsGroup=False)
        info = npb.MessageInfo(
            ID=f"B{i:08d}", Timestamp=1_700_000_000_000 + i, MessageSource=src, Pushname="Ann"
        )
        ev = npb.Message(Info=info, Message=e2e.Message(conversation=f"message number {i}"))
        out.append((ev.SerializePartialToString(), EVENT_TO_INT[npb.Message]))
    return out


async def dispatch(engine: NeonizeEngine, n: int) -> dict:
    got: list[model.Event] = []
    client = engine.client("bench-dispatch", got.append)
    nc = client.native()
    payloads = build_events(n)

    def feed() -> None:
        for data, code in payloads:
            buf = ctypes.create_string_buffer(data, len(data))
            nc.event.execute(nc.uuid, ctypes.addressof(buf), len(data), code)

    t0 = time.perf_counter()
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    while len(got) < n:  # noqa: ASYNC110  (the sink is a plain list, as the real one is)
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    ordered = [m.wa_id for m in got] == [f"B{i:08d}" for i in range(n)]
    print(
        f"dispatch: {n} events in {elapsed:.2f} s = {n / elapsed:,.0f} events/s "
        f"(foreign thread -> execute -> sink), in order: {ordered}"
    )
    return {"events": n, "events_s": n / elapsed, "in_order": ordered}


async def retrying(engine: NeonizeEngine, tenants: int, duration_s: float, tag: str) -> None:
    attempts = 0

    async def loop_one(i: int) -> None:
        nonlocal attempts
        dead = asyncio.Event()
        client = engine.client(
            f"bench-{tag}-{i}", lambda ev: dead.set() if isinstance(ev, model.ClientDead) else None
        )
        # An empty store file: the client dials (for a QR login) and fails at the proxy.
        client.store_path.parent.mkdir(parents=True, exist_ok=True)
        client.store_path.touch()
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            dead.clear()
            await client.connect()
            attempts += 1
            try:
                await asyncio.wait_for(dead.wait(), 15)
            except TimeoutError:
                pass
            await client.stop()
            await asyncio.sleep(0.5)  # a short backoff, as the supervisor would

    t0 = time.monotonic()
    await asyncio.gather(*(loop_one(i) for i in range(tenants)))
    r = process_resources()
    print(
        f"{tenants:4d} offline tenants retrying {time.monotonic() - t0:5.1f} s: "
        f"{attempts:5d} connects, RSS {r['rss_bytes'] / 2**20:7.1f} MiB, "
        f"open fds {r['open_fds']}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--retry-s", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 5,000 events, no retries")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.events, args.retry_s = 5_000, 0.0
    logging.basicConfig(level=logging.ERROR)
    import_neonize()
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="oxyd-bench-"))
    proxy = DelayProxy(0.3).__enter__()
    engine = NeonizeEngine(data_dir, max_tenants=128, proxy=proxy.url)
    await engine.start()
    r = process_resources()
    print(
        f"   0 tenants (neonize loaded): RSS {r['rss_bytes'] / 2**20:7.1f} MiB, "
        f"open fds {r['open_fds']}"
    )
    if args.retry_s > 0:
        for n in (20, 100):
            await retrying(engine, n, args.retry_s, f"n{n}")
    figures = await dispatch(engine, args.events)
    figures["rss_mib"] = r["rss_bytes"] / 2**20
    figures["clean_close"] = await engine.close()
    print("clean close:", figures["clean_close"])
    if args.json:
        text = json.dumps(figures, indent=1, default=str)
        await asyncio.to_thread(pathlib.Path(args.json).write_text, text)


if __name__ == "__main__":
    asyncio.run(main())
