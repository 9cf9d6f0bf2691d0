"""Hands tenants this node holds but no longer owns to their owner (after `cluster.nodes`
changed), one at a time, and finishes moves a restart interrupted.

The steps of one move, and what a crash at each leaves:
  1. record ('out', peer) in cluster_moves     crash: restart keeps the tenant stopped, asks
  2. stop the tenant, commit its queued events        the peer (step 5)
  3. build the archive
  4. PUT it to the owner, which verifies, imports it in one transaction and starts it
  5. owner confirms (201, or 200 for a retry): delete our rows, folder and the record in one
     go. No answer: ask the owner whether it has the tenant. Yes: step 5. No: roll back (the
     record goes, the tenant starts here again, the move is retried later). Owner down: wait.
A tenant therefore runs on the owner only once the owner has all of it, and here only while
no move is open: never on two nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import aiohttp
from loguru import logger

from oxyd.cluster import archive, handover
from oxyd.cluster.node import Node
from oxyd.cluster.peers import PeerUnavailable
from oxyd.cluster.routes import SHA_HEADER
from oxyd.store import moves
from oxyd.supervision.runner import Runner

# A refused move (not the owner, a copy there already) is retried this much later.
REFUSED_RETRY_S = 300.0


class Mover:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.app = node.app
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._not_before: dict[str, float] = {}
        self.moved = 0  # tenants handed off since start (for tests and logs)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="oxyd-cluster-mover")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        interval_s = self.app.cfg.cluster.move_interval_s
        while True:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug here must not end the daemon: log, try later
                logger.opt(exception=e).error("cluster mover pass failed: {}", e)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s)

    async def pass_once(self) -> int:
        """Resume open moves, then move every tenant held here but owned elsewhere."""
        done = 0
        for tid, rec in (await moves.all_moves(self.app.store, moves.OUT)).items():
            done += await self._resume(tid, rec["peer"], None)
        now = time.monotonic()
        for tid in sorted(self.app.supervisor.runners):
            owner = self.node.owner(tid)
            if owner == self.node.me or self._not_before.get(tid, 0) > now:
                continue
            done += await self.move(tid, owner)
        return done

    async def move(self, tid: str, target: int) -> int:
        app, node = self.app, self.node
        log = logger.bind(tenant=tid)
        # Is the owner there at all? Stopping the tenant for a node that is down helps no one.
        try:
            await node.peers.get_json(target, "/healthz", {})
        except PeerUnavailable:
            return 0
        started = time.monotonic()
        await moves.record(app.store, tid, moves.OUT, target, None, "sending", app.clock.now_ms())
        node.moving.add(tid)
        runner = await handover.detach(app, tid)
        path = handover.work_dir(app, "out", f"{tid}.tar")
        try:
            manifest = await handover.export(app, tid, path, node.me)
            sha = await asyncio.to_thread(archive.sha256_file, path)
            status, detail = await self._send(target, tid, path, sha)
        except Exception as e:
            log.opt(exception=e).error("move to node {} failed before sending: {}", target, e)
            await self._rollback(tid, runner, str(e))
            return 0
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, path)
        if status in (200, 201):
            await self._finish(tid, target)
            node.retired.append(runner.client)
            log.info(
                "moved to node {} in {:.2f}s ({} rows)",
                target,
                time.monotonic() - started,
                sum(manifest["rows"].values()),
            )
            return 1
        if status is not None and 400 <= status < 500:
            log.error("node {} refused the tenant ({} {}); it stays here", target, status, detail)
            self._not_before[tid] = time.monotonic() + REFUSED_RETRY_S
            await self._rollback(tid, runner, detail)
            return 0
        log.warning("no clear answer from node {} ({}); asking it", target, detail)
        return await self._resume(tid, target, runner)

    async def _send(self, target: int, tid: str, path, sha: str) -> tuple[int | None, str]:
        peers = self.node.peers

        async def body():
            with open(path, "rb") as f:  # noqa: ASYNC230 (chunks read in a thread below)
                while chunk := await asyncio.to_thread(f.read, archive.CHUNK):
                    yield chunk

        headers = {**peers.internal_headers(), SHA_HEADER: sha}
        try:
            async with peers.session.put(
                peers.url(target, f"/v1/cluster/tenants/{tid}/archive"),
                data=body(),
                headers=headers,
            ) as resp:
                text = await resp.text()
                return resp.status, text[:300]
        except (aiohttp.ClientError, TimeoutError) as e:
            return None, type(e).__name__

    async def _resume(self, tid: str, target: int, runner: Runner | None) -> int:
        """An open move: does the owner have the tenant? Finish, roll back, or wait."""
        try:
            status, body = await self.node.peers.get_json(
                target, f"/v1/cluster/tenants/{tid}", self.node.peers.internal_headers()
            )
        except PeerUnavailable:
            return 0  # still stopped here; asked again next pass
        if status == 200 and body.get("held"):
            await self._finish(tid, target)
            if runner is not None:
                self.node.retired.append(runner.client)
            logger.bind(tenant=tid).info("move to node {} confirmed", target)
            return 1
        if status == 200 and body.get("moving"):
            return 0  # the owner is importing it right now
        await self._rollback(tid, runner, f"node {target} does not have it")
        return 0

    async def _finish(self, tid: str, target: int) -> None:
        await handover.drop(self.app, tid, [(moves.DELETE_SQL, (tid, moves.OUT))])
        self.node.moving.discard(tid)
        self.moved += 1

    async def _rollback(self, tid: str, runner: Runner | None, why: str) -> None:
        await moves.forget(self.app.store, tid, moves.OUT)
        self.node.moving.discard(tid)
        if tid not in self.app.supervisor.runners:
            await handover.attach(self.app, tid, runner)
        logger.bind(tenant=tid).info("move rolled back ({}); the tenant runs here again", why)
