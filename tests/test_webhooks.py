"""The webhook dispatcher against a real local aiohttp receiver and real SQLite files."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import until
from loguru import logger

from oxyd.clock import FakeClock, RealClock, settle
from oxyd.config import WebhooksConfig
from oxyd.model import Message, Tenant
from oxyd.store import outbox
from oxyd.store.db import Store
from oxyd.store.writer import Writer
from oxyd.webhooks import USER_AGENT, Dispatcher, backoff_s, retry_after_s

SECRET = "s3cret-for-tests"
DOC = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"


def readme_verify() -> Callable[..., bool]:
    """The receiver's verification function exactly as docs/webhooks.md shows it."""
    code = re.search(r"```python\n(.*?def verify.*?)```", DOC.read_text(), re.S)
    assert code, "docs/webhooks.md lost its verify() example"
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)
    return scope["verify"]


class Receiver:
    """A real HTTP server on 127.0.0.1. `answer(path, event_id, attempt)` decides the reply
    (a status, (status, headers), or an awaitable of either); default 200."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.delivered: list[dict[str, Any]] = []
        self.answer: Callable[[str, str, int], Any] = lambda path, eid, n: 200
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        event_id = json.loads(raw)["id"]
        n = 1 + sum(1 for a in self.attempts if a["id"] == event_id and a["path"] == request.path)
        rec = {
            "id": event_id,
            "path": request.path,
            "raw": raw,
            "headers": dict(request.headers),
            "at": time.monotonic(),
        }
        self.attempts.append(rec)
        reply = self.answer(request.path, event_id, n)
        if inspect.isawaitable(reply):
            reply = await reply
        status, headers = reply if isinstance(reply, tuple) else (reply, {})
        if status < 300:
            self.delivered.append(rec)
        return web.Response(status=status, headers=headers, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def ids(self, name: str, *, attempts: bool = False) -> list[str]:
        seen = self.attempts if attempts else self.delivered
        return [a["id"] for a in seen if a["path"] == f"/{name}"]


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path)
    yield s
    await s.close()


@pytest.fixture
async def dispatchers():
    made: list[Dispatcher] = []

    async def make(store: Store, clock, **cfg: Any) -> Dispatcher:
        cfg.setdefault("retry_base_s", 0.02)
        cfg.setdefault("retry_cap_s", 0.1)
        d = Dispatcher(store, WebhooksConfig(**cfg), clock)
        await d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        await d.stop()


def real_now_fake_clock() -> FakeClock:
    # Signatures carry wall-clock seconds that receivers check for freshness.
    return FakeClock(start_ms=time.time_ns() // 1_000_000)


async def add_tenant(store: Store, tenant_id: str, url: str, secret: str = SECRET) -> None:
    await store.add_tenant(Tenant(id=tenant_id, engine="simulator"))
    await store.set_webhook(tenant_id, url, secret, None, 0)


def msg(i: int, chat: str = "111@s.whatsapp.net") -> Message:
    return Message(
        wa_id=f"WA{i:05d}",
        chat=chat,
        sender=chat,
        from_me=False,
        sent_at_ms=1_700_000_000_000 + i,
        text=f"hello {i}",
    )


async def write_messages(store, clock, subs, disp, tenant_id: str, n: int) -> None:
    """The real path: the writer commits messages and their outbox rows together."""
    writer = Writer(store, clock, subs, on_commit=lambda _: disp.kick())
    writer.start()
    for i in range(n):
        await writer.put(tenant_id, msg(i))
    await writer.stop()


async def append_events(store, subs, disp, tenant_id, event_type, n, at_ms) -> list[str]:
    rows = []
    for i in range(n):
        rows += outbox.rows(subs, tenant_id, event_type, {"n": i, "reason": "test"}, at_ms)
    await store.append_outbox(rows)
    disp.kick()
    return list(dict.fromkeys(r[0] for r in rows))


async def outbox_rows(store: Store, dest: str) -> list[dict[str, Any]]:
    async with store.ro.execute(
        "SELECT event_id, status, attempts, next_attempt_ms, last_error, body FROM outbox"
        " WHERE destination=? ORDER BY id",
        (dest,),
    ) as cur:
        keys = ("id", "status", "attempts", "next_attempt_ms", "last_error", "body")
        return [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]


async def statuses(store: Store, dest: str) -> list[str]:
    return [r["status"] for r in await outbox_rows(store, dest)]


def all_are(status: str, store: Store, dest: str, n: int):
    async def check() -> bool:
        s = await statuses(store, dest)
        return len(s) == n and all(x == status for x in s)

    return check


async def test_signed_delivery_through_the_writer(store, receiver, dispatchers):
    clock = RealClock()
    await add_tenant(store, "shop", receiver.url("shop"))
    subs = outbox.Subscriptions()
    subs.set_tenant("shop", None)
    disp = await dispatchers(store, clock)
    await write_messages(store, clock, subs, disp, "shop", 3)

    await until(lambda: len(receiver.delivered) == 3, what="3 deliveries")
    verify = readme_verify()
    rows = await outbox_rows(store, "t:shop")
    assert [r["id"] for r in rows] == receiver.ids("shop")
    for rec, row in zip(receiver.delivered, rows, strict=True):
        h = rec["headers"]
        assert rec["raw"] == row["body"].encode()  # sent as stored, byte for byte
        assert verify(SECRET, rec["raw"], h["X-Oxyd-Timestamp"], h["X-Oxyd-Signature"])
        assert not verify("other", rec["raw"], h["X-Oxyd-Timestamp"], h["X-Oxyd-Signature"])
        assert not verify(SECRET, rec["raw"] + b" ", h["X-Oxyd-Timestamp"], h["X-Oxyd-Signature"])
        stale = str(int(h["X-Oxyd-Timestamp"]) - 3600)
        assert not verify(SECRET, rec["raw"], stale, h["X-Oxyd-Signature"])
        assert h["X-Oxyd-Event-Id"] == rec["id"]
        assert h["Content-Type"] == "application/json"
        assert h["User-Agent"] == USER_AGENT
        event = json.loads(rec["raw"])
        assert set(event) == {"id", "type", "tenant", "at_ms", "data"}
        assert (event["type"], event["tenant"]) == ("message.received", "shop")
    assert [json.loads(r["raw"])["data"]["text"] for r in receiver.delivered] == [
        "hello 0",
        "hello 1",
        "hello 2",
    ]
    await until(all_are("delivered", store, "t:shop", 3), what="rows marked delivered")
    assert disp.stats.as_dict() == {"delivered": 3, "retried": 0, "failed_4xx": 0, "dead": 0}
    assert await disp.pending() == 0


async def test_no_duplicates_while_writing_and_delivering_concurrently(
    store, receiver, dispatchers
):
    # Without failures nothing is sent twice: a worker must never read the outbox as it was
    # before its own "delivered" commit (the benchmark once saw ~1% duplicates that way).
    clock = RealClock()
    subs = outbox.Subscriptions()
    for t in ("a", "b", "c"):
        await add_tenant(store, t, receiver.url(t))
        subs.set_tenant(t, None)
    disp = await dispatchers(store, clock)
    writer = Writer(store, clock, subs, batch_max=7, on_commit=lambda _: disp.kick())
    writer.start()
    for i in range(300):
        await writer.put("abc"[i % 3], msg(i))
        if i % 20 == 0:
            await asyncio.sleep(0)  # let commits and deliveries interleave
    await writer.stop()
    await until(lambda: len(receiver.delivered) >= 300, what="300 deliveries")
    for t in ("a", "b", "c"):
        await until(all_are("delivered", store, f"t:{t}", 100))
        assert receiver.ids(t, attempts=True) == [
            r["id"] for r in await outbox_rows(store, f"t:{t}")
        ]
    assert len(receiver.attempts) == 300 and disp.stats.delivered == 300


async def test_retry_delays_grow_on_the_fake_clock(store, receiver, dispatchers):
    clock = real_now_fake_clock()
    await add_tenant(store, "a", receiver.url("a"))
    receiver.answer = lambda path, eid, n: 503 if len(receiver.attempts) <= 4 else 200
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp = await dispatchers(store, clock, retry_base_s=10, retry_cap_s=1000)
    ids = await append_events(store, subs, disp, "a", "tenant.state", 3, clock.now_ms())

    delays_ms = []
    for n in range(1, 5):
        await until(lambda n=n: len(receiver.attempts) == n, what=f"attempt {n}")

        async def scheduled(n=n) -> bool:
            return (await outbox_rows(store, "t:a"))[0]["attempts"] == n

        await until(scheduled, what=f"retry {n} persisted")
        await until(lambda: clock.sleepers >= 2, what="worker waiting on the clock")
        delay_ms = (await outbox_rows(store, "t:a"))[0]["next_attempt_ms"] - clock.now_ms()
        nominal_ms = 10_000 * 2 ** (n - 1)
        assert nominal_ms * 0.74 <= delay_ms <= nominal_ms
        delays_ms.append(delay_ms)
        await clock.advance(delay_ms / 1000 - 1)
        assert len(receiver.attempts) == n  # not before its time
        await clock.advance(1.01)
    assert delays_ms == sorted(delays_ms)
    await until(lambda: receiver.ids("a") == ids, what="all delivered in order")
    assert receiver.ids("a", attempts=True) == [ids[0]] * 5 + ids[1:]
    assert disp.stats.retried == 4


async def test_receiver_down_then_back_loses_nothing_and_keeps_order(store, dispatchers):
    clock = RealClock()
    receiver = Receiver()
    await receiver.start()
    await receiver.stop()  # keeps its port: down until started again
    subs = outbox.Subscriptions(global_events=())  # global destination: alerts only
    for t in ("a", "b"):
        await add_tenant(store, t, receiver.url(t))
        subs.set_tenant(t, None)
    disp = await dispatchers(
        store, clock, url=receiver.url("global"), secret="ops", max_attempts=1000
    )
    await write_messages(store, clock, subs, disp, "a", 40)
    await write_messages(store, clock, subs, disp, "b", 25)
    alert_ids = await append_events(store, subs, disp, "b", "alert.zombie", 5, clock.now_ms())

    async def retried(dest: str) -> bool:
        rows = await outbox_rows(store, dest)
        return rows[0]["attempts"] >= 3 and "cannot connect" in rows[0]["last_error"]

    for dest in ("t:a", "t:b", "global"):
        await until(lambda d=dest: retried(d), what=f"{dest} retrying")
    try:
        await receiver.start()
        await until(lambda: len(receiver.ids("a")) >= 40 and len(receiver.ids("b")) >= 30)
        await until(lambda: len(receiver.ids("global")) >= 5)
        for name, dest in (("a", "t:a"), ("b", "t:b"), ("global", "global")):
            expected = [r["id"] for r in await outbox_rows(store, dest)]
            # At least once, none missing, in creation order per destination.
            assert list(dict.fromkeys(receiver.ids(name))) == expected
        assert receiver.ids("global") == alert_ids
        for dest, n in (("t:a", 40), ("t:b", 30), ("global", 5)):
            await until(all_are("delivered", store, dest, n), what=f"{dest} delivered")
        assert disp.stats.retried >= 9 and disp.stats.dead == 0
    finally:
        await receiver.stop()


async def test_4xx_is_not_retried(store, receiver, dispatchers):
    await add_tenant(store, "a", receiver.url("a"))
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    rows = outbox.rows(subs, "a", "tenant.state", {}, 1) + outbox.rows(
        subs, "a", "pairing.qr", {}, 2
    )
    rows += outbox.rows(subs, "a", "tenant.state", {}, 3)
    bad = rows[1][0]
    receiver.answer = lambda path, eid, n: 422 if eid == bad else 200
    await store.append_outbox(rows)
    disp = await dispatchers(store, RealClock())
    await until(lambda: len(receiver.delivered) == 2, what="the good ones")
    assert receiver.ids("a", attempts=True) == [r[0] for r in rows]  # the bad one once
    assert receiver.ids("a") == [rows[0][0], rows[2][0]]
    await until(lambda: len(receiver.attempts) == 3)
    dead = await disp.dead("a")
    assert [(d["id"], d["attempts"], d["last_error"]) for d in dead] == [(bad, 1, "HTTP 422")]
    assert dead[0]["event"]["type"] == "pairing.qr"
    assert disp.stats.failed_4xx == 1 and disp.stats.retried == 0


async def test_429_retry_after_is_honoured(store, receiver, dispatchers):
    clock = real_now_fake_clock()
    await add_tenant(store, "a", receiver.url("a"))
    receiver.answer = lambda path, eid, n: (
        (429, {"Retry-After": "30"}) if len(receiver.attempts) == 1 else 200
    )
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp = await dispatchers(store, clock, retry_base_s=1)
    ids = await append_events(store, subs, disp, "a", "message.status", 2, clock.now_ms())

    async def scheduled() -> bool:
        return (await outbox_rows(store, "t:a"))[0]["attempts"] == 1

    await until(scheduled, what="the 429 recorded")
    await until(lambda: clock.sleepers >= 2, what="worker waiting on the clock")
    row = (await outbox_rows(store, "t:a"))[0]
    assert row["next_attempt_ms"] - clock.now_ms() == 30_000
    assert row["last_error"] == "HTTP 429"
    await clock.advance(29)
    assert len(receiver.attempts) == 1
    await clock.advance(1.01)
    await until(lambda: receiver.ids("a") == ids, what="delivered after Retry-After")


def test_retry_after_forms_and_backoff_curve():
    now_s = 1_445_412_470.0
    assert retry_after_s("120", now_s) == 120
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now_s) == 10
    assert retry_after_s("Wed, 21 Oct 2015 07:00:00 GMT", now_s) == 0
    assert retry_after_s("soon", now_s) is None
    assert retry_after_s(None, now_s) is None
    for n in range(1, 15):
        d = backoff_s(n, 1.0, 600.0)
        nominal = min(600.0, 2 ** (n - 1))
        assert nominal * 0.75 <= d <= nominal


async def test_dead_after_max_attempts_then_replay(store, receiver, dispatchers):
    await add_tenant(store, "a", receiver.url("a"))
    failing = True
    receiver.answer = lambda path, eid, n: 503 if failing else 200
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp = await dispatchers(store, RealClock(), max_attempts=3)
    ids = await append_events(store, subs, disp, "a", "tenant.state", 2, time.time_ns() // 10**6)
    await until(all_are("dead", store, "t:a", 2), what="both dead")
    assert receiver.ids("a", attempts=True) == [ids[0]] * 3 + [ids[1]] * 3
    dead = await disp.dead("a", limit=10)
    assert [d["id"] for d in dead] == ids[::-1]  # newest first
    assert all(d["attempts"] == 3 and d["last_error"] == "HTTP 503 (3 attempts)" for d in dead)
    assert disp.stats.dead == 2 and disp.stats.retried == 4
    assert (await disp.counts())["dead"] == 2

    failing = False
    assert await disp.replay("a") == 2
    await until(lambda: receiver.ids("a") == ids, what="replayed in order")
    await until(all_are("delivered", store, "t:a", 2))
    assert await disp.dead("a") == []
    assert await disp.replay("a") == 0


async def test_old_events_die_after_one_failed_attempt(store, receiver, dispatchers):
    clock = real_now_fake_clock()
    await add_tenant(store, "a", receiver.url("a"))
    receiver.answer = lambda path, eid, n: 500
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp = await dispatchers(store, clock, max_age_s=60, retry_base_s=5)
    old = clock.now_ms() - 120_000
    old_ids = await append_events(store, subs, disp, "a", "tenant.state", 3, old)
    young = await append_events(store, subs, disp, "a", "tenant.state", 1, clock.now_ms())

    async def settled() -> bool:
        rows = await outbox_rows(store, "t:a")
        return [r["status"] for r in rows] == ["dead"] * 3 + ["pending"] and rows[3]["attempts"]

    await until(settled, what="old ones dead, young one retrying")
    # One request for the old ones, not one each: the rest expired together.
    assert receiver.ids("a", attempts=True) == [old_ids[0], young[0]]
    assert all("too old" in d["last_error"] for d in await disp.dead("a"))


async def test_deleted_webhook_parks_events_as_dead_until_readded(store, receiver, dispatchers):
    await add_tenant(store, "a", receiver.url("a"))
    subs = outbox.Subscriptions(global_events=())
    subs.set_tenant("a", None)
    await store.delete_webhook("a")
    disp = await dispatchers(store, RealClock())  # and no global URL configured
    ids = await append_events(store, subs, disp, "a", "alert.failed", 2, 1)
    await until(all_are("dead", store, "t:a", 2))
    await until(all_are("dead", store, "global", 2))
    assert {d["last_error"] for d in await disp.dead("a")} == {
        "no webhook configured for this destination"
    }
    assert len(await disp.dead(None)) == 2
    await store.set_webhook("a", receiver.url("a"), SECRET, None, 0)
    assert await disp.replay("a") == 2
    await until(lambda: receiver.ids("a") == ids)


async def test_changed_url_gets_the_pending_events_now(store, receiver, dispatchers):
    clock = real_now_fake_clock()
    await add_tenant(store, "a", receiver.url("broken"))
    receiver.answer = lambda path, eid, n: 503 if path == "/broken" else 200
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp = await dispatchers(store, clock, retry_base_s=3600, retry_cap_s=3600)
    ids = await append_events(store, subs, disp, "a", "tenant.state", 3, clock.now_ms())
    await until(lambda: len(receiver.attempts) == 1 and clock.sleepers >= 2)
    await store.set_webhook("a", receiver.url("a"), SECRET, None, 0)
    await disp.webhook_changed("a")  # what PUT .../webhook calls; the clock does not move
    await until(lambda: receiver.ids("a") == ids, what="sent to the new URL")


async def test_restart_resumes_the_persisted_schedule(tmp_path, receiver):
    clock = real_now_fake_clock()
    cfg = WebhooksConfig(retry_base_s=10, retry_cap_s=100)
    receiver.answer = lambda path, eid, n: 503 if len(receiver.attempts) <= 2 else 200
    store1 = await Store.open(tmp_path)
    await add_tenant(store1, "a", receiver.url("a"))
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp1 = Dispatcher(store1, cfg, clock)
    await disp1.start()
    ids = await append_events(store1, subs, disp1, "a", "tenant.state", 5, clock.now_ms())
    await until(lambda: len(receiver.attempts) == 1 and clock.sleepers >= 2)
    await disp1.stop()
    await store1.close()

    store2 = await Store.open(tmp_path)
    disp2 = Dispatcher(store2, cfg, clock)
    try:
        await disp2.start()
        head = (await outbox_rows(store2, "t:a"))[0]
        assert head["attempts"] == 1 and head["last_error"] == "HTTP 503"
        await until(lambda: clock.sleepers >= 2, what="the new worker waits for the old schedule")
        assert len(receiver.attempts) == 1
        await clock.advance((head["next_attempt_ms"] - clock.now_ms()) / 1000 + 0.01)
        await until(lambda: len(receiver.attempts) == 2 and clock.sleepers >= 2)
        await clock.advance(21)
        await until(lambda: receiver.ids("a") == ids, what="resumed and delivered")
        await until(all_are("delivered", store2, "t:a", 5))
        assert (await outbox_rows(store2, "t:a"))[0]["attempts"] == 3
    finally:
        await disp2.stop()
        await store2.close()


async def test_stop_lets_the_in_flight_delivery_finish(tmp_path, receiver):
    release = asyncio.Event()

    async def slow(path, eid, n):
        await release.wait()
        return 200

    receiver.answer = slow
    store = await Store.open(tmp_path)
    await add_tenant(store, "a", receiver.url("a"))
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp = Dispatcher(store, WebhooksConfig(), RealClock())
    await disp.start()
    ids = await append_events(store, subs, disp, "a", "tenant.state", 4, 1)
    await until(lambda: len(receiver.attempts) == 1, what="first POST in flight")
    stopping = asyncio.create_task(disp.stop())
    await settle()
    assert not stopping.done()
    release.set()
    await stopping
    assert await statuses(store, "t:a") == ["delivered"] + ["pending"] * 3  # none lost
    await store.close()

    store = await Store.open(tmp_path)
    disp = Dispatcher(store, WebhooksConfig(), RealClock())
    await disp.start()
    try:
        await until(lambda: receiver.ids("a") == ids)
        await until(all_are("delivered", store, "t:a", 4))
    finally:
        await disp.stop()
        await store.close()


async def test_slow_destination_does_not_hold_up_another(store, receiver, dispatchers):
    release = asyncio.Event()

    async def answer(path, eid, n):
        if path == "/slow":
            await release.wait()
        return 200

    receiver.answer = answer
    subs = outbox.Subscriptions()
    for t in ("slow", "fast"):
        await add_tenant(store, t, receiver.url(t))
        subs.set_tenant(t, None)
    disp = await dispatchers(store, RealClock())
    slow_ids = await append_events(store, subs, disp, "slow", "tenant.state", 10, 1)
    fast_ids = await append_events(store, subs, disp, "fast", "tenant.state", 10, 1)
    await until(lambda: receiver.ids("fast") == fast_ids, what="fast destination served")
    assert receiver.ids("slow", attempts=True) == slow_ids[:1]  # still stuck on its first
    release.set()
    await until(lambda: receiver.ids("slow") == slow_ids)


async def test_prune_removes_only_old_delivered_rows(store, receiver, dispatchers):
    clock = real_now_fake_clock()
    await add_tenant(store, "a", receiver.url("a"))
    subs = outbox.Subscriptions()
    subs.set_tenant("a", None)
    disp = await dispatchers(store, clock, retention_s=3600)
    ids = await append_events(store, subs, disp, "a", "tenant.state", 4, clock.now_ms())
    receiver.answer = lambda path, eid, n: 400 if eid == ids[3] else 200
    await until(lambda: len(receiver.attempts) == 4)
    await until(lambda: disp.stats.failed_4xx == 1)

    async def marked() -> bool:
        return await statuses(store, "t:a") == ["delivered"] * 3 + ["dead"]

    await until(marked)
    assert await disp.prune() == 0  # not old enough yet
    await clock.advance(3601)
    assert await disp.prune() == 3
    assert await disp.counts() == {"pending": 0, "delivered": 0, "dead": 1}


async def test_logs_and_errors_never_show_secrets_or_credentials(store, receiver, dispatchers):
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    try:
        receiver.answer = lambda path, eid, n: 503 if len(receiver.attempts) == 1 else 200
        creds = f"http://user:pa55word@127.0.0.1:{receiver.port}/a?token=t0ken"
        await add_tenant(store, "a", creds)
        await store.add_tenant(Tenant(id="down", engine="simulator"))
        await store.set_webhook(
            "down", "http://user:pa55word@127.0.0.1:1/x?token=t0ken", SECRET, None, 0
        )
        subs = outbox.Subscriptions()
        subs.set_tenant("a", None)
        subs.set_tenant("down", None)
        disp = await dispatchers(store, RealClock(), max_attempts=2)
        await append_events(store, subs, disp, "a", "tenant.state", 1, time.time_ns() // 10**6)
        await append_events(store, subs, disp, "down", "tenant.state", 1, time.time_ns() // 10**6)
        await until(lambda: len(receiver.delivered) == 1)
        await until(all_are("dead", store, "t:down", 1))
    finally:
        logger.remove(sink)
    errors = [r["last_error"] or "" for r in await outbox_rows(store, "t:down")]
    text = "\n".join(lines + errors)
    assert "127.0.0.1" in text and "cannot connect" in text
    for secret in ("pa55word", "t0ken", SECRET, "user:"):
        assert secret not in text
