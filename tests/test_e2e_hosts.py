"""The real `oxyd run` with `neonize.hosts: 2`: real neonize clients in engine hosts, dialling
through a proxy on 127.0.0.1 that answers 502; simulator tenants ingest while a host is killed;
no host outlives the daemon (SIGTERM or SIGKILL)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import sqlite3
import time
import urllib.request

import pytest
from helpers import sync_until
from neonize_fakes import DelayProxy, install_store, make_template
from test_e2e_run import TOKEN, Daemon

pytestmark = pytest.mark.e2e
if importlib.util.find_spec("neonize") is None:
    pytest.skip("neonize is not installed", allow_module_level=True)

NEONIZE = ["n0", "n1", "n2", "n3"]


def host_pids(parent: int) -> set[int]:
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] != "Z" and int(fields[1]) == parent and b"oxyd.neonize.host" in cmd:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def history(data_dir: pathlib.Path, tenant: str) -> list[str]:
    con = sqlite3.connect(f"file:{data_dir / 'oxyd.sqlite3'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT reason FROM state_history WHERE tenant=? ORDER BY rowid", (tenant,)
        )
        return [r[0] or "" for r in rows]
    finally:
        con.close()


@pytest.fixture(scope="module")
def proxy():
    with DelayProxy(0.3) as p:
        yield p


@pytest.fixture
def hosted(tmp_path, proxy):
    data = tmp_path / "data"
    template = make_template(tmp_path, proxy.url)
    for tid in NEONIZE:  # folders without a record: adopted, checked once by a child
        install_store(template, data, tid)
    d = Daemon(
        data,
        OXYD_NEONIZE_HOSTS="2",
        OXYD_NEONIZE_PROXY=proxy.url,
        OXYD_SUPERVISOR_BACKOFF_BASE_S="0.3",
        OXYD_SUPERVISOR_BACKOFF_CAP_S="1",
        OXYD_SUPERVISOR_MAX_FAILURES="1000",
        OXYD_SUPERVISOR_STOP_GRACE_S="5",
    )
    yield d
    d.kill()


def test_killed_host_costs_nothing_elsewhere_and_no_host_outlives_the_daemon(hosted, proxy):
    d = hosted.start()
    sync_until(lambda: len(host_pids(d.proc.pid)) == 2, 60, "two engine hosts")
    first = host_pids(d.proc.pid)
    for tid in ("sa", "sb"):
        assert d.call("POST", "/v1/tenants", {"id": tid, "engine": "simulator"})[0] == 201
    sync_until(lambda: d.states().get("sa") == d.states().get("sb") == "connected", 20, "sim up")

    def tenants():
        return {t["id"]: t for t in d.get("/v1/tenants")[1]["tenants"]}

    # The adopted stores were recorded (jid from the store, read by a child) and really dial.
    sync_until(
        lambda: all("Bad Gateway" in (tenants()[t]["last_error"] or "") for t in NEONIZE),
        90,
        "every neonize tenant dialled through the proxy",
    )
    assert all(tenants()[t]["jid"] == "15550001234@s.whatsapp.net" for t in NEONIZE)
    assert proxy.connects >= 4
    req = urllib.request.Request(
        f"http://127.0.0.1:{d.port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    assert "oxyd_engine_hosts 2.0" in text and "oxyd_engine_host_crashes_total 0.0" in text

    # Simulator tenants ingest while one host is killed.
    for tid in ("sa", "sb"):
        body = {
            "action": "message",
            "chat": "4915000000001@s.whatsapp.net",
            "text": "hi",
            "count": 300,
        }
        assert d.call("POST", f"/v1/tenants/{tid}/simulate", body)[0] in (200, 202)
    # Dials held open by the proxy: every tenant has a session in flight (a long dial each,
    # counted by the proxy) when the host is killed.
    proxy.delay_s = 20.0
    held = proxy.connects
    sync_until(lambda: proxy.connects >= held + 4, 60, "four long dials in flight")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    for tid in ("sa", "sb"):
        body = {
            "action": "message",
            "chat": "4915000000002@s.whatsapp.net",
            "text": "hi",
            "count": 300,
        }
        assert d.call("POST", f"/v1/tenants/{tid}/simulate", body)[0] in (200, 202)

    def stored(tid: str) -> int:
        code, body = d.get(f"/v1/tenants/{tid}/messages?limit=1000")
        return len(body["messages"]) if code == 200 else -1

    sync_until(lambda: stored("sa") == stored("sb") == 600, 60, "600 messages each")
    # The host comes back; its tenants were told why they lost their session.
    sync_until(
        lambda: len(host_pids(d.proc.pid)) == 2 and victim not in host_pids(d.proc.pid),
        60,
        "host restarted",
    )

    def told() -> list[str]:
        return [t for t in NEONIZE if any("killed by SIGKILL" in r for r in history(d.data_dir, t))]

    sync_until(lambda: len(told()) == 2, 30, "the killed host's two tenants told")
    assert len(told()) == 2  # the other host's tenants never hear of it
    proxy.delay_s = 0.3
    assert tenants()["sa"]["state"] == tenants()["sb"]["state"] == "connected"
    time.sleep(1)  # a little more traffic through the restarted host
    assert stored("sa") == stored("sb") == 600

    # SIGTERM: the hosts stop with the daemon.
    second = host_pids(d.proc.pid)
    assert d.stop(signal.SIGTERM, timeout_s=30) == 0
    assert not [p for p in second if alive(p)]

    # SIGKILL: the hosts notice (stdin closes, parent-death signal) and exit by themselves.
    d.start()
    sync_until(lambda: len(host_pids(d.proc.pid)) == 2, 60, "two engine hosts again")
    third = host_pids(d.proc.pid)
    d.proc.kill()
    d.proc.wait()
    sync_until(lambda: not [p for p in third if alive(p)], 20, "orphaned hosts exit")
