"""Engine hosts with the real neonize binary and no network: device stores made by neonize with a
fake paired device, connects through a proxy on 127.0.0.1 that answers 502 after a delay."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
import time

import pytest
from helpers import until
from neonize_fakes import DelayProxy, feeding_host_argv, install_store, make_template

from oxyd import model
from oxyd.engine import EngineError, NotConnected, Refused, SendRejected
from oxyd.neonize import wire
from oxyd.neonize.pool import HostPool
from oxyd.outgoing import Outgoing, new_wa_id

# Not imported here (the hosts import it): its import leaks a pipe that pytest would flag.
if importlib.util.find_spec("neonize") is None:
    pytest.skip("neonize is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def proxy():
    with DelayProxy(0.2) as p:
        yield p


@pytest.fixture(scope="module")
def template(tmp_path_factory, proxy):
    return make_template(tmp_path_factory.mktemp("template"), proxy.url)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def dead_events(got: list) -> list[model.ClientDead]:
    return [e for e in got if isinstance(e, model.ClientDead)]


def test_wire_round_trips_model_events_and_errors():
    ev = model.HistorySync(
        sync_type="full",
        conversations=1,
        messages=(model.Message("A", "c@s", "s@s", False, 1, raw=b"\x00", media=model.Media()),),
        chat_names=(("c@s", "Chat"),),
    )
    data = wire.frame(
        {"op": "events", "items": [["t", ev], ["t", model.Receipt("c", "s", ("a",), "read", 2)]]}
    )
    reader = wire.Reader()
    frames = reader.feed(data[:3]) + reader.feed(data[3:])
    assert frames[0]["items"][0][1] == ev and isinstance(frames[0]["items"][1][1].wa_ids, tuple)
    assert type(wire.exception("NotConnected", "x")) is NotConnected
    assert type(wire.exception("EngineError", "x")) is EngineError
    assert type(wire.exception("ValueError", "x")) is ValueError
    assert isinstance(wire.exception("SomethingElse", "x"), wire.RemoteError)
    # Any oxyd dataclass crosses by its qualified name (no registration), foreign ones never.
    out = Outgoing(id="3EB0AB", chat="4915@s.whatsapp.net", kind="image", body={"a": [1]})
    assert reader.feed(wire.frame({"v": out}))[0]["v"] == out
    with pytest.raises(wire.WireError):
        wire._lookup("os:system")
    # Exceptions keep their plain attributes (Refused.status, SendRejected.code).
    refused = wire.Reader().feed(wire.error_frame(1, Refused("not an admin", 406)))[0]
    again = wire.exception(refused["type"], refused["message"], refused["attrs"])
    assert type(again) is Refused and again.status == 406
    rejected = wire.Reader().feed(wire.error_frame(2, SendRejected("invalid_recipient", "no")))[0]
    again = wire.exception(rejected["type"], rejected["message"], rejected["attrs"])
    assert type(again) is SendRejected and again.code == "invalid_recipient"


async def test_hosts_connect_in_parallel_report_failures_and_forward_methods(
    tmp_path, proxy, template
):
    pool = HostPool(tmp_path, hosts=2, tenants_per_host=2, proxy=proxy.url)
    got: dict[str, list] = {}
    try:
        await pool.start()
        pids = [h.pid for h in pool.hosts]
        clients = []
        for i in range(4):
            install_store(template, tmp_path, f"t{i}")
            clients.append(pool.client(f"t{i}", got.setdefault(f"t{i}", []).append))
        # Any NeonizeClient method crosses the pipe; its plain-data result comes back.
        assert await clients[0].device() == ("15550001234@s.whatsapp.net", "Fake")
        assert await clients[0].heartbeat() is False
        with pytest.raises(NotConnected):  # the same exception type as in-process
            await clients[1].send(Outgoing(new_wa_id(), "4915111111111@s.whatsapp.net", "text"))
        with pytest.raises(SendRejected) as rejected:  # keeps its type and code across
            await clients[1].send(Outgoing(new_wa_id(), "nobody", "text"))
        assert rejected.value.code == "invalid_recipient"
        with pytest.raises(AttributeError):
            clients[0].simulate  # noqa: B018 - not a NeonizeClient method: not forwarded
        await asyncio.gather(*(c.connect() for c in clients))
        # Least-loaded placement, capped per host.
        assert sorted(len(h.tenants) for h in pool.hosts) == [2, 2]
        with pytest.raises(EngineError, match="full"):
            await pool.client("t9", lambda e: None).heartbeat()
        await until(lambda: all(dead_events(v) for v in got.values()), 30, "4 failed dials")
        assert "Bad Gateway" in dead_events(got["t0"])[0].error  # through the local proxy
        assert proxy.connects >= 4
        res = await pool.resources()
        assert [r["pid"] for r in res] == pids and all(r["open_fds"] > 0 for r in res)
        for c in clients:
            await c.stop()
        await clients[0].remove()  # a removed tenant frees its place
        assert sorted(len(h.tenants) for h in pool.hosts) == [1, 2]
        assert await pool.client("t9", lambda e: None).heartbeat() is False
    finally:
        assert await pool.close()
    await until(lambda: not any(alive(p) for p in pids), 10, "hosts gone")


async def test_a_killed_host_ends_only_its_tenants_and_comes_back(tmp_path, proxy, template):
    pool = HostPool(tmp_path, hosts=2, proxy=proxy.url)
    pool.restart_base_s = 0.05
    got: dict[str, list] = {}
    try:
        await pool.start()
        clients = []
        for i in range(4):
            install_store(template, tmp_path, f"k{i}")
            clients.append(pool.client(f"k{i}", got.setdefault(f"k{i}", []).append))
        for c in clients:
            await c.heartbeat()  # placed: k0, k2 on host 1; k1, k3 on host 2
        victim = pool.hosts[0]
        # A session on the victim that is still dialling (the proxy holds it).
        proxy.delay_s = 5.0
        await asyncio.gather(clients[0].connect(), clients[1].connect())
        os.kill(victim.pid, signal.SIGKILL)
        await until(lambda: dead_events(got["k0"]), 10, "k0 told")
        assert "engine host 1 killed by SIGKILL" in dead_events(got["k0"])[0].error
        assert not dead_events(got["k2"])  # no session there: nothing to report
        assert not dead_events(got["k1"])  # the other host's tenant lost nothing
        # Calls in flight or new calls never hang: they fail or land on a living host.
        assert await clients[2].heartbeat() is False
        await until(lambda: pool.restarts == 1 and len(pool.live_hosts()) == 2, 60, "restart")
        assert pool.crashes == 1 and pool.hosts[0].number == 1 and pool.hosts[0].pid != victim.pid
    finally:
        proxy.delay_s = 0.2
        assert await pool.close()


async def test_host_exits_when_the_daemon_is_gone(tmp_path):
    """No host outlives its daemon: stdin closing (and the parent-death signal) end it."""
    script = (
        "import asyncio, sys\n"
        "from oxyd.neonize.pool import HostPool\n"
        "async def main():\n"
        f"    pool = HostPool({str(tmp_path)!r}, hosts=2)\n"
        "    await pool.start()\n"
        "    print(' '.join(str(h.pid) for h in pool.hosts), flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    pids = [int(p) for p in line.split()]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    proc.kill()
    await proc.wait()
    t0 = time.monotonic()
    await until(lambda: not any(alive(p) for p in pids), 20, "orphaned hosts exit")
    assert time.monotonic() - t0 < 15


async def test_killing_one_host_loses_nothing_on_another(tmp_path):
    """Host 2 streams 20,000 events (through neonize's own dispatch entry point, from a foreign
    thread) while host 1 is SIGKILLed: every event arrives, in order, once."""
    pool = HostPool(tmp_path, hosts=2)
    pool.host_argv = feeding_host_argv()
    pool.restart_base_s = 0.05
    got: list = []
    try:
        await pool.start()
        h1, h2 = pool.hosts
        pool.client("fed", got.append)
        h2.tenants.add("fed")
        n = 20_000
        await h2.call(None, "prepare", ("fed", n, "F"), {})
        await h2.call(None, "feed", (), {})
        await until(lambda: len(got) > 100, 30, "stream started")
        os.kill(h1.pid, signal.SIGKILL)
        await until(lambda: len(got) >= n, 120, "every event")
        await until(lambda: pool.restarts == 1, 60, "host 1 back")
        assert [e.wa_id for e in got] == [f"F{i:08d}" for i in range(n)]
        assert all(isinstance(e, model.Message) for e in got)
    finally:
        assert await pool.close()


async def test_tenant_proxy_wins_over_the_default_and_survives_a_host_restart(
    tmp_path, proxy, template
):
    pool = HostPool(tmp_path, hosts=1, proxy=proxy.url)
    pool.restart_base_s = 0.05
    got: list = []
    with DelayProxy(0.1) as own:
        try:
            install_store(template, tmp_path, "p0")
            client = pool.client("p0", got.append)
            await client.configure({"proxy": own.url})
            before = proxy.connects
            await client.connect()
            await until(lambda: dead_events(got), 30, "dial through the tenant's proxy")
            await client.stop()
            assert own.connects == 1 and proxy.connects == before
            # A fresh host learns the tenant's settings again before its next call.
            os.kill(pool.hosts[0].pid, signal.SIGKILL)
            await until(lambda: pool.restarts == 1, 60, "host back")
            await client.connect()
            await until(lambda: len(dead_events(got)) == 2, 30, "second dial")
            await client.stop()
            assert own.connects == 2 and proxy.connects == before
            with pytest.raises(EngineError, match="proxy"):
                await client.configure({"proxy": "ftp://nope:1"})
        finally:
            assert await pool.close()


async def test_recycling_moves_sessions_to_a_fresh_host(tmp_path, proxy, template):
    """A host past recycle_fds is drained: its tenants with a session reconnect on a fresh
    host (one at a time, through the connect slot), then the old host exits."""
    pool = HostPool(tmp_path, hosts=1, proxy=proxy.url, recycle_fds=10)
    pool.recycle_check_s = 3600  # this test triggers the check itself
    slots: list[int] = []

    @contextlib.asynccontextmanager
    async def slot():
        slots.append(1)
        yield

    pool.connect_slot = slot
    got: dict[str, list] = {}
    try:
        await pool.start()
        old = pool.hosts[0]
        clients = []
        for i in range(3):
            install_store(template, tmp_path, f"r{i}")
            clients.append(pool.client(f"r{i}", got.setdefault(f"r{i}", []).append))
        for c in clients[:2]:
            await c.connect()
        await clients[2].heartbeat()  # placed, no session
        await until(lambda: dead_events(got["r0"]) and dead_events(got["r1"]), 30, "dialled")
        before = proxy.connects
        assert await pool.check_recycling() == 1  # any host has more than 10 fds
        assert not alive(old.pid) and old not in pool.hosts
        (fresh,) = pool.hosts
        assert fresh.tenants == {"r0", "r1", "r2"} and fresh.pid != old.pid
        assert len(slots) == 3 and pool.recycled == 1
        # The two sessions connect again on the fresh host (and fail there at the proxy).
        await until(lambda: proxy.connects >= before + 2, 30, "two sessions dial again")
        await until(lambda: len(dead_events(got["r1"])) == 2, 30, "r1 dialled on the fresh host")
        assert not dead_events(got["r2"])
    finally:
        assert await pool.close()
