"""GET /metrics: Prometheus text, collected at scrape time from live objects.

Each web app gets its OWN CollectorRegistry (tests build many apps in one process; the global
default registry would refuse the second set of metric names). Figures the supervisor, writer
and dispatcher already keep are read when Prometheus scrapes, so the hot paths pay nothing.
prometheus_client is imported here only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oxyd.app import App
from oxyd.http import shapes as s
from oxyd.http.operation import Input, operation
from oxyd.model import State

table = web.RouteTableDef()

# Latency buckets for a local control port: most answers take well under 10 ms.
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self, app: App) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(OxydCollector(app))
        ProcessCollector(namespace="oxyd", registry=self.registry)  # RSS, fds, CPU (Linux)
        self.http_requests = Counter(
            "oxyd_http_requests",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "oxyd_http_request_duration_seconds",
            "HTTP request duration by route template",
            ("route",),
            buckets=HTTP_BUCKETS_S,
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, elapsed_s: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route).observe(elapsed_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS: web.AppKey[Metrics] = web.AppKey("oxyd_metrics", Metrics)


def _stats_dict(stats: Any) -> dict[str, Any]:
    if stats is None:
        return {}
    if isinstance(stats, dict):
        return stats
    as_dict = getattr(stats, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    if dataclasses.is_dataclass(stats):
        return dataclasses.asdict(stats)
    return {}


class OxydCollector(Collector):
    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        sup, writer = self.app.supervisor, self.app.writer
        by_state = sup.counts_by_state()
        tenants = GaugeMetricFamily("oxyd_tenants", "Tenants by state", labels=["state"])
        for st in State:  # every state, zeros included, so dashboards need no absent()
            tenants.add_metric([str(st)], by_state.get(str(st), 0))
        yield tenants

        stored = CounterMetricFamily(
            "oxyd_messages_stored", "Messages stored per tenant", labels=["tenant"]
        )
        for tid, r in sorted(sup.runners.items()):
            stored.add_metric([tid], r.t.messages_stored)
        yield stored
        for name, counts, doc in (
            ("oxyd_reconnects", sup.reconnects, "Reconnects per tenant"),
            ("oxyd_zombies", sup.zombies, "Zombie connections torn down per tenant"),
        ):
            fam = CounterMetricFamily(name, doc, labels=["tenant"])
            for tid, n in sorted(counts.items()):
                fam.add_metric([tid], n)
            yield fam

        sending = sup.sending
        queued = GaugeMetricFamily(
            "oxyd_send_queued", "Messages queued to send per tenant", labels=["tenant"]
        )
        for tid, n in sorted(sending.depth.items()):
            queued.add_metric([tid], n)
        yield queued
        sends = CounterMetricFamily("oxyd_sends", "Queued messages by outcome", labels=["result"])
        sends.add_metric(["sent"], sending.sent)
        sends.add_metric(["failed"], sending.failed)
        yield sends
        yield GaugeMetricFamily(
            "oxyd_writer_queue_depth", "Items waiting for the store writer", value=writer.depth
        )
        yield GaugeMetricFamily(
            "oxyd_writer_failing", "1 while the writer cannot commit", value=int(writer.failing)
        )
        stats = writer.stats
        yield CounterMetricFamily(
            "oxyd_writer_failures", "Writer commit failures", value=stats.failures
        )
        yield CounterMetricFamily("oxyd_writer_batches", "Writer batches", value=stats.batches)
        yield CounterMetricFamily(
            "oxyd_writer_dead_lettered",
            "Items the store refused every time (isolated, logged, not stored)",
            value=stats.rejected,
        )
        yield CounterMetricFamily(
            "oxyd_writer_duplicates", "Redelivered messages ignored", value=stats.duplicates
        )
        gate = sup.gate
        yield GaugeMetricFamily(
            "oxyd_connects_in_flight", "Connects in flight", value=getattr(gate, "in_flight", 0)
        )
        yield GaugeMetricFamily(
            "oxyd_connects_peak", "Most connects in flight at once", value=getattr(gate, "peak", 0)
        )

        hooks = CounterMetricFamily(
            "oxyd_webhook_deliveries", "Webhook delivery attempts by result", labels=["result"]
        )
        dispatcher = self.app.extras.get("webhooks")
        for result, n in sorted(_stats_dict(getattr(dispatcher, "stats", None)).items()):
            if isinstance(n, int | float) and not isinstance(n, bool):
                hooks.add_metric([result], n)
        yield hooks
        yield GaugeMetricFamily(
            "oxyd_start_time_ms", "When this process started (Unix ms)", value=self.app.started_ms
        )
        media = self.app.extras.get("media")
        if media is not None:
            yield from media_metrics(media)
        pool = self.app.engines.get("neonize")
        if hasattr(pool, "last_resources"):  # neonize.hosts > 0
            yield from host_metrics(pool)
        people = self.app.extras.get("people")
        if people is not None:
            yield from people_metrics(people)


def host_metrics(pool: Any) -> Iterator[Metric]:
    """Engine hosts: how many run, what went wrong, and each one's fds and RSS (sampled every
    `recycle_check_s` by the pool, never asked for at scrape time)."""
    yield GaugeMetricFamily(
        "oxyd_engine_hosts", "Engine host processes running", value=len(pool.live_hosts())
    )
    for name, value, doc in (
        ("oxyd_engine_host_crashes", pool.crashes, "Engine hosts that died unasked"),
        ("oxyd_engine_host_restarts", pool.restarts, "Engine hosts restarted after a crash"),
        ("oxyd_engine_hosts_recycled", pool.recycled, "Engine hosts replaced past a limit"),
    ):
        yield CounterMetricFamily(name, doc, value=value)
    fds = GaugeMetricFamily("oxyd_engine_host_open_fds", "Open fds per host", labels=["host"])
    rss = GaugeMetricFamily("oxyd_engine_host_rss_bytes", "RSS per host", labels=["host"])
    placed = GaugeMetricFamily("oxyd_engine_host_tenants", "Tenants per host", labels=["host"])
    for res in pool.last_resources:
        fds.add_metric([str(res["host"])], res.get("open_fds", 0))
        rss.add_metric([str(res["host"])], res.get("rss_bytes", 0))
    for h in pool.live_hosts():
        placed.add_metric([str(h.number)], len(h.tenants))
    yield fds
    yield rss
    yield placed


def media_metrics(downloads: Any) -> Iterator[Metric]:
    results = CounterMetricFamily(
        "oxyd_media_downloads",
        "Media downloads by result (stored, deduplicated, failed, skipped, retried, expired,"
        " reuploaded)",
        labels=["result"],
    )
    for result in ("stored", "deduplicated", "failed", "skipped", "retried", "expired"):
        results.add_metric([result], downloads.results.get(result, 0))
    results.add_metric(["reuploaded"], downloads.results.get("reuploaded", 0))
    yield results
    stored = GaugeMetricFamily(
        "oxyd_media_bytes_stored", "Bytes of media files on disk per tenant", labels=["tenant"]
    )
    for tid, n in sorted(downloads.bytes_by_tenant.items()):
        stored.add_metric([tid], n)
    yield stored
    yield GaugeMetricFamily(
        "oxyd_media_queue_depth", "Media downloads waiting", value=downloads.queue_depth
    )
    yield GaugeMetricFamily(
        "oxyd_media_downloads_in_flight", "Media downloads running", value=downloads.in_flight
    )


def people_metrics(people: Any) -> Iterator[Metric]:
    """What the people and group routes asked WhatsApp: the figures behind a ban risk."""
    requests = CounterMetricFamily(
        "oxyd_whatsapp_requests",
        "People and group requests sent to WhatsApp, per tenant and method",
        labels=["tenant", "method"],
    )
    for (tid, method), n in sorted(people.requests.items()):
        requests.add_metric([tid, method], n)
    yield requests
    lookups = CounterMetricFamily(
        "oxyd_lookup_numbers",
        "Numbers looked up, by where the answer came from (cache or whatsapp)",
        labels=["source"],
    )
    for source in ("cache", "whatsapp"):
        lookups.add_metric([source], people.lookups[source])
    yield lookups


@operation(
    table.get,
    "/metrics",
    "Prometheus metrics",
    access="admin",
    ok=(200, {"description": "Prometheus text", "content": {"text/plain": {"schema": s.STR}}}),
)
async def metrics(request: web.Request, inp: Input) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
