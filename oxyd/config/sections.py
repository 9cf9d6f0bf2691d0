"""The configuration's shape: one frozen dataclass per section, each with its defaults and
its own validate(), and Config, the whole."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oxyd.config.checks import ConfigError, _check
from oxyd.proxy import mask as mask_proxy
from oxyd.proxy import proxy_error

SECRET_KEYS = {"webhooks.secret"}
WEBHOOK_EVENTS = (
    "message.received",
    "message.sent",
    "message.status",
    "tenant.state",
    "pairing.qr",
    "pairing.code",
    "history.synced",
    "contact.identity",
    "group.updated",
    "group.participants",
    "call.rejected",
    "alert.logged_out",
    "alert.conflict",
    "alert.banned",
    "alert.outdated",
    "alert.failed",
    "alert.zombie",
    "alert.storage",
    "message.media",
    "alert.media_quota",
)
MEDIA_TYPES = ("image", "video", "audio", "voice", "document", "sticker")


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8780
    admin_token_file: Path | None = None
    max_body_bytes: int = 1_048_576

    def validate(self, p: str) -> None:
        _check(1 <= self.port <= 65535, f"{p}.port", "must be an integer between 1 and 65535")
        _check(bool(self.host), f"{p}.host", "must not be empty")
        _check(self.max_body_bytes >= 1024, f"{p}.max_body_bytes", "must be at least 1024")


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"

    def validate(self, p: str) -> None:
        levels = {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}
        _check(self.level.upper() in levels, f"{p}.level", f"must be one of {sorted(levels)}")
        _check(self.format in ("text", "json"), f"{p}.format", "must be 'text' or 'json'")


@dataclass(frozen=True)
class SupervisorConfig:
    connect_concurrency: int = 8
    heartbeat_s: float = 30.0
    zombie_after_s: float = 180.0
    reconnect_timeout_s: float = 300.0
    max_failures: int = 10
    stable_after_s: float = 60.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    # How long a connect may take before it counts as failed.
    connect_timeout_s: float = 90.0
    pair_timeout_s: float = 180.0
    # Shutdown: time for clients to stop and queues to drain before exit is forced.
    stop_grace_s: float = 10.0

    def validate(self, p: str) -> None:
        _check(self.connect_concurrency >= 1, f"{p}.connect_concurrency", "must be at least 1")
        _check(self.max_failures >= 1, f"{p}.max_failures", "must be at least 1")
        for name in (
            "heartbeat_s",
            "zombie_after_s",
            "reconnect_timeout_s",
            "backoff_base_s",
            "backoff_cap_s",
            "connect_timeout_s",
            "pair_timeout_s",
            "stop_grace_s",
        ):
            _check(getattr(self, name) > 0, f"{p}.{name}", "must be a positive number of seconds")
        _check(self.stable_after_s >= 0, f"{p}.stable_after_s", "must not be negative")
        _check(
            self.backoff_cap_s >= self.backoff_base_s,
            f"{p}.backoff_cap_s",
            "must be at least supervisor.backoff_base_s",
        )


@dataclass(frozen=True)
class StoreConfig:
    batch_max: int = 1000
    queue_max: int = 100_000

    def validate(self, p: str) -> None:
        _check(1 <= self.batch_max <= 100_000, f"{p}.batch_max", "must be between 1 and 100000")
        _check(self.queue_max >= self.batch_max, f"{p}.queue_max", "must be at least batch_max")


@dataclass(frozen=True)
class SendConfig:
    rate_per_min: float = 20.0
    burst: int = 5
    max_media_bytes: int = 16_777_216
    queue_max: int = 1000
    queue_max_age_s: float = 86400.0
    max_attempts: int = 10
    timeout_s: float = 60.0
    # An engine that cannot reuse message ids (neonize): resend a message whose outcome is
    # unknown (at least once) instead of failing it as outcome_unknown (never twice).
    resend_unknown: bool = False

    def validate(self, p: str) -> None:
        _check(self.rate_per_min > 0, f"{p}.rate_per_min", "must be positive")
        _check(self.burst >= 1, f"{p}.burst", "must be at least 1")
        _check(self.max_media_bytes >= 1, f"{p}.max_media_bytes", "must be positive")
        _check(self.queue_max >= 1, f"{p}.queue_max", "must be at least 1")
        _check(self.max_attempts >= 1, f"{p}.max_attempts", "must be at least 1")
        for name in ("queue_max_age_s", "timeout_s"):
            _check(getattr(self, name) > 0, f"{p}.{name}", "must be a positive number of seconds")


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 60.0

    def validate(self, p: str) -> None:
        _check(self.interval_s > 0, f"{p}.interval_s", "must be a positive number of seconds")


@dataclass(frozen=True)
class WebhooksConfig:
    url: str | None = None
    secret: str | None = None
    events: tuple[str, ...] = ()
    max_attempts: int = 12
    max_age_s: float = 86400.0
    timeout_s: float = 10.0
    # Delivered rows are kept this long (for inspection), then pruned.
    retention_s: float = 7 * 86400.0
    # First retry delay; doubles per attempt up to retry_cap_s.
    retry_base_s: float = 1.0
    retry_cap_s: float = 600.0
    # Tenant-set webhook URLs may target loopback, link-local, private addresses and the
    # control port only when this is true (SSRF guard; admin-set URLs are never guarded).
    allow_private: bool = False

    def validate(self, p: str) -> None:
        if self.url is not None:
            _check(
                self.url.startswith(("http://", "https://")),
                f"{p}.url",
                "must be an http:// or https:// URL",
            )
            _check(bool(self.secret), f"{p}.secret", "is required when webhooks.url is set")
        for ev in self.events:
            _check(ev in WEBHOOK_EVENTS, f"{p}.events", f"unknown event type {ev!r}")
        _check(self.max_attempts >= 1, f"{p}.max_attempts", "must be at least 1")
        for name in ("max_age_s", "timeout_s", "retention_s", "retry_base_s", "retry_cap_s"):
            _check(getattr(self, name) > 0, f"{p}.{name}", "must be a positive number of seconds")


@dataclass(frozen=True)
class BackupConfig:
    schedule: str | None = None
    keep: int = 7
    key_file: Path | None = None
    # Media files can outgrow everything else by orders of magnitude; off by default.
    media: bool = False

    def validate(self, p: str) -> None:
        _check(self.keep >= 1, f"{p}.keep", "must be at least 1")
        if self.schedule is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.schedule)
            except ValueError as e:
                raise ConfigError(f"{p}.schedule: not a valid cron expression ({e})") from None


@dataclass(frozen=True)
class RetentionConfig:
    messages_days: float | None = None
    unpaired_days: float = 30.0
    # Bookkeeping that grows with every state change and history sync (state_history,
    # history_syncs): without a bound, a flapping tenant fills the disk with it.
    history_days: float = 30.0

    def validate(self, p: str) -> None:
        if self.messages_days is not None:
            _check(self.messages_days > 0, f"{p}.messages_days", "must be positive")
        _check(self.unpaired_days > 0, f"{p}.unpaired_days", "must be positive")
        _check(self.history_days > 0, f"{p}.history_days", "must be positive")


@dataclass(frozen=True)
class MediaConfig:
    download: bool = True
    max_bytes: int = 104_857_600
    types: tuple[str, ...] = ("all",)
    quota_mb: float = 0.0  # per tenant; 0 = no quota
    retention_days: float = 0.0  # 0 = keep forever
    concurrency: int = 4
    history: bool = False  # also download the media of history-sync messages
    # Transient failures (network, tenant offline) are retried with backoff this many times.
    max_attempts: int = 8
    retry_base_s: float = 5.0
    retry_cap_s: float = 600.0
    # How long the phone gets to re-upload an expired file.
    reupload_timeout_s: float = 60.0
    # Flush each new file to the disk before its row says "stored" (a power cut then never
    # leaves a stored row over a truncated file). Costs throughput on slow disks.
    fsync: bool = True

    def validate(self, p: str) -> None:
        _check(self.max_bytes >= 1, f"{p}.max_bytes", "must be positive")
        for t in self.types:
            _check(
                t == "all" or t in MEDIA_TYPES,
                f"{p}.types",
                f"unknown media type {t!r}; use 'all' or some of {list(MEDIA_TYPES)}",
            )
        _check(self.quota_mb >= 0, f"{p}.quota_mb", "must not be negative (0 = no quota)")
        _check(self.retention_days >= 0, f"{p}.retention_days", "must not be negative (0 = keep)")
        _check(1 <= self.concurrency <= 256, f"{p}.concurrency", "must be between 1 and 256")
        _check(self.max_attempts >= 1, f"{p}.max_attempts", "must be at least 1")
        for name in ("retry_base_s", "retry_cap_s", "reupload_timeout_s"):
            _check(getattr(self, name) > 0, f"{p}.{name}", "must be a positive number of seconds")

    def wants(self, media_type: str) -> bool:
        return "all" in self.types or media_type in self.types


@dataclass(frozen=True)
class LookupConfig:
    # Answers from WhatsApp (is it on WhatsApp, profile pictures) are reused this long:
    # checking the same numbers again and again is how numbers get banned.
    cache_s: float = 86400.0

    def validate(self, p: str) -> None:
        _check(self.cache_s >= 0, f"{p}.cache_s", "must not be negative")


@dataclass(frozen=True)
class SimulatorConfig:
    connect_latency_ms: int = 0
    pair_after_ms: int = 1000
    # The simulated media CDN's speed per download (0 = as fast as the machine): slow
    # networks and interrupted downloads, reproducibly.
    cdn_bytes_per_s: int = 0

    def validate(self, p: str) -> None:
        _check(self.connect_latency_ms >= 0, f"{p}.connect_latency_ms", "must not be negative")
        _check(self.pair_after_ms >= 0, f"{p}.pair_after_ms", "must not be negative")
        _check(self.cdn_bytes_per_s >= 0, f"{p}.cdn_bytes_per_s", "must not be negative")


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster mode (design §16): `nodes` 1 is off, unless `peer_url` is set: a one-node
    cluster still takes tenants handed to it, which is how a cluster shrinks back to one node.
    `node` is this node's ordinal, or `auto` for the number ending the hostname (a
    StatefulSet pod is named <set>-<ordinal>)."""

    nodes: int = 1
    node: str = "auto"
    peer_url: str | None = None
    token_file: Path | None = None
    # How often a node retries handing off tenants it holds but no longer owns.
    move_interval_s: float = 10.0
    # A peer that does not accept a connection within this time counts as unavailable.
    peer_timeout_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.nodes > 1 or self.peer_url is not None

    def validate(self, p: str) -> None:
        _check(1 <= self.nodes <= 1024, f"{p}.nodes", "must be between 1 and 1024")
        _check(
            self.node == "auto" or (self.node.isdigit() and int(self.node) < 1024),
            f"{p}.node",
            "must be 'auto' or a node ordinal (0, 1, ...)",
        )
        _check(self.move_interval_s > 0, f"{p}.move_interval_s", "must be positive")
        _check(self.peer_timeout_s > 0, f"{p}.peer_timeout_s", "must be positive")
        if self.enabled:
            _check(
                bool(self.peer_url) and "{n}" in (self.peer_url or ""),
                f"{p}.peer_url",
                "is required with cluster.nodes > 1, as a template with {n}"
                " (e.g. http://oxyd-{n}.oxyd-peers:8780)",
            )
            _check(
                (self.peer_url or "").startswith(("http://", "https://")),
                f"{p}.peer_url",
                "must be an http:// or https:// URL template",
            )
            _check(
                self.token_file is not None,
                f"{p}.token_file",
                "is required in cluster mode (the shared secret of node-to-node calls)",
            )


@dataclass(frozen=True)
class NeonizeConfig:
    # 0 = the neonize clients run in the daemon; N = in N engine host processes.
    hosts: int = 0
    tenants_per_host: int = 64
    # Default proxy of every neonize tenant (a tenant's own `proxy` setting wins).
    proxy: str | None = None
    # A host past either limit is drained and replaced (each connect leaks a store handle).
    recycle_fds: int | None = None
    recycle_rss_mb: float | None = None

    def validate(self, p: str) -> None:
        _check(0 <= self.hosts <= 256, f"{p}.hosts", "must be between 0 and 256")
        _check(self.tenants_per_host >= 1, f"{p}.tenants_per_host", "must be at least 1")
        if self.proxy is not None:
            why = proxy_error(self.proxy)
            _check(why is None, f"{p}.proxy", str(why))
        if self.recycle_fds is not None:
            _check(self.recycle_fds >= 64, f"{p}.recycle_fds", "must be at least 64")
        if self.recycle_rss_mb is not None:
            _check(self.recycle_rss_mb >= 64, f"{p}.recycle_rss_mb", "must be at least 64")


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("./data")
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    send: SendConfig = field(default_factory=SendConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    lookup: LookupConfig = field(default_factory=LookupConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    neonize: NeonizeConfig = field(default_factory=NeonizeConfig)

    def as_dict(self, *, mask: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"data_dir": str(self.data_dir)}
        for f in dataclasses.fields(self):
            if f.name == "data_dir":
                continue
            sec = {}
            for k, v in dataclasses.asdict(getattr(self, f.name)).items():
                if mask and f"{f.name}.{k}" in SECRET_KEYS and v:
                    v = "***"
                if mask and f"{f.name}.{k}" == "neonize.proxy" and v:
                    v = mask_proxy(v)
                sec[k] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
            out[f.name] = sec
        return out
