"""Real `oxyd run` processes as cluster nodes on 127.0.0.1x (one loopback address per node,
all on one port: the peer URL template is then http://127.0.0.1{n}:PORT). bench/cluster.py
starts its nodes with this module too."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers import oxyd_env, sync_until

TOKEN = "cluster-e2e-admin-token-0123456789"


def host(n: int) -> str:
    return f"127.0.0.1{n}"


def free_cluster_port(nodes: int) -> int:
    """A port free on every node's address."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for n in range(nodes):
                with socket.socket() as s:
                    s.bind((host(n), port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


class Node:
    def __init__(self, root: Path, n: int, port: int, **env: str) -> None:
        self.n, self.port, self.root = n, port, root
        self.data_dir = root / f"node{n}"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = root / f"node{n}.log"

    def start(self, nodes: int, wait: bool = True) -> Node:
        token_file = self.root / "cluster.token"
        if not token_file.exists():
            token_file.write_text("cluster-secret-e2e-0123456789abcdef\n")
        settings = {
            "OXYD_HTTP_HOST": host(self.n),
            "OXYD_CLUSTER_NODES": str(nodes),
            "OXYD_CLUSTER_NODE": str(self.n),
            "OXYD_CLUSTER_PEER_URL": f"http://127.0.0.1{{n}}:{self.port}",
            "OXYD_CLUSTER_TOKEN_FILE": str(token_file),
            "OXYD_CLUSTER_MOVE_INTERVAL_S": "0.5",
            "OXYD_CLUSTER_PEER_TIMEOUT_S": "2",
            "OXYD_SIMULATOR_PAIR_AFTER_MS": "300",
            "OXYD_SUPERVISOR_STOP_GRACE_S": "3",
        }
        # The node's own env (Node(..., **env)) wins: bench/cluster.py sets its own timings.
        env = oxyd_env(self.data_dir, self.port, TOKEN, **{**settings, **self.env})
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oxyd", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait:
            self.wait_up()
        return self

    def wait_up(self, timeout_s: float = 60) -> None:
        sync_until(lambda: self.call("GET", "/readyz")[0] == 200, timeout_s, f"node {self.n} up")

    def url(self, path: str) -> str:
        return f"http://{host(self.n)}:{self.port}{path}"

    def call(self, method, path, body=None, token=TOKEN, headers=None, timeout_s=10):
        h = {"Content-Type": "application/json", **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            self.url(path),
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=h,
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return r.status, json.loads(r.read() or b"null"), dict(r.headers)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                data = json.loads(raw or b"null")
            except ValueError:
                data = raw
            return e.code, data, dict(e.headers)
        except OSError:
            return 0, None, {}

    def fetch(self, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        """Raw bytes (media)."""
        h = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        req = urllib.request.Request(self.url(path), headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def local_ids(self) -> set[str] | None:
        """The tenants this node itself runs (asked for this node alone), None when down."""
        code, body, _ = self.call("GET", "/v1/tenants", headers={"X-Oxyd-Scope": "node"})
        return {t["id"] for t in body["tenants"]} if code == 200 else None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class TwiceWatch:
    """Polls every node's own tenant list in the background and records any tenant that two
    nodes run at once (seen on both in two consecutive rounds: one round is not atomic)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.twice: set[str] = set()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TwiceWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        previous: set[str] = set()
        while not self._stop.is_set():
            seen: dict[str, int] = {}
            both: set[str] = set()
            for node in self.nodes:
                for tid in node.local_ids() or ():
                    if tid in seen:
                        both.add(tid)
                    seen[tid] = node.n
            self.twice |= both & previous
            previous = both
            self.rounds += 1
            time.sleep(0.05)


class EventStream:
    """A blocking reader of GET /v1/events: frames as (event, data), comments skipped."""

    def __init__(self, node: Node, token: str = TOKEN) -> None:
        req = urllib.request.Request(
            node.url("/v1/events"), headers={"Authorization": f"Bearer {token}"}
        )
        self.resp = urllib.request.urlopen(req, timeout=20)

    def next(self) -> tuple[str, object]:
        while True:
            event, data = "message", None
            while (line := self.resp.readline().decode()).strip():
                if line.startswith("event: "):
                    event = line[7:].strip()
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
            if data is not None:
                return event, data

    def close(self) -> None:
        self.resp.close()
