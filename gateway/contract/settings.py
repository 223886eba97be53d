"""Typed, validated, frozen settings: the only place configuration is read.

Sources, later ones winning: built-in defaults, the YAML file, `GATEWAY_*`
environment variables, then command-line flags. Everything is checked once at
start-up; a problem is reported as one line naming its key path, e.g.
`upstreams.payment.breaker.failure_rate_threshold: ...`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.contract import redis_sentinel, scopes
from gateway.contract.json_types import ACCEPT_WHOLE_FLOATS, Instant, WholeInt
from gateway.contract.routes import IDEMPOTENT_BACKENDS, Backend


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerSettings(_Model):
    """When a backend's circuit breaker trips and how it recovers (see docs/operations.md)."""

    # Every number is bounded: an SRE's typo must not become a figure no JSON (or timer)
    # can carry, which would break every later read of the breakers.
    failure_rate_threshold: float = Field(0.5, ge=0, le=1)
    slow_call_duration_ms: Annotated[int, Field(gt=0, le=600_000), ACCEPT_WHOLE_FLOATS] = 2000
    slow_call_rate_threshold: float = Field(0.8, ge=0, le=1)
    minimum_calls: Annotated[int, Field(ge=1, le=1_000_000), ACCEPT_WHOLE_FLOATS] = 10
    window_seconds: Annotated[int, Field(ge=1, le=3600), ACCEPT_WHOLE_FLOATS] = 30
    consecutive_failures: Annotated[int, Field(ge=1, le=1_000_000), ACCEPT_WHOLE_FLOATS] = 5
    open_seconds: float = Field(10.0, gt=0, le=86_400)
    half_open_calls: Annotated[int, Field(ge=1, le=10_000), ACCEPT_WHOLE_FLOATS] = 2


class RetrySettings(_Model):
    """Retries of safe calls (see gateway/backends/retry.py)."""

    max_retries: WholeInt = Field(2, ge=0, le=10)
    base_backoff_ms: WholeInt = Field(25, ge=0, le=10_000)
    max_backoff_ms: WholeInt = Field(250, ge=0, le=60_000)
    # Retries may add at most this share of the calls of the last ten seconds...
    budget_ratio: float = Field(0.2, ge=0, le=1)
    # ... or this many per second, whichever is more.
    min_retries_per_s: float = Field(3.0, ge=0, le=1000)
    # No retry starts with less than this left of the request's deadline.
    min_time_left_ms: WholeInt = Field(50, ge=0, le=60_000)


class UpstreamSettings(_Model):
    url: str
    connect_timeout_s: float = Field(1.0, gt=0, le=60)
    timeout_s: float = Field(5.0, gt=0, le=300)
    pool_size: WholeInt = Field(100, ge=1, le=10_000)
    # Bulkhead: calls in flight to this backend, and calls waiting for a slot.
    max_concurrent: WholeInt = Field(100, ge=1, le=10_000)
    max_queue: WholeInt = Field(50, ge=0, le=100_000)
    # Connections idle this long are closed; below the backends' own keep-alive
    # timeout, so the gateway never reuses a connection the backend is closing.
    keepalive_s: float = Field(15.0, gt=0)
    # For an https:// backend: a PEM file of the CAs its certificate is checked against
    # (a private CA); None: the system's CAs.
    ca_file: str | None = None
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, data: Any) -> Any:
        # Once the reason keyed POSTs were resent; a backend's own deduplication is never
        # that reason now, so a config still naming it is told rather than obeyed.
        if isinstance(data, dict) and "dedups_by_key" in data:
            raise ValueError("dedups_by_key: no longer a setting; remove it (a POST that may "
                             "have reached the backend is resent only after a lookup says "
                             "the backend has no record of it, see docs/operations.md)")
        return data

    @model_validator(mode="after")
    def _bulkhead_within_pool(self) -> UpstreamSettings:
        # Beyond the pool, aiohttp would queue calls itself, unbounded and unseen.
        if self.max_concurrent > self.pool_size:
            raise ValueError("max_concurrent: must not exceed pool_size")
        return self

    @model_validator(mode="after")
    def _ca_file_for_tls(self) -> UpstreamSettings:
        if self.ca_file is not None:
            if not self.url.startswith("https://"):
                raise ValueError("ca_file: only for an https:// url")
            if not Path(self.ca_file).is_file():
                raise ValueError(f"ca_file: no such file: {self.ca_file}")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")


# Where each backend is when nothing says otherwise: the local simulators' ports.
DEFAULT_URLS: dict[Backend, str] = {"order": "http://127.0.0.1:9101",
                                     "payment": "http://127.0.0.1:9102",
                                     "availability": "http://127.0.0.1:9103"}


class UpstreamsSettings(_Model):
    order: UpstreamSettings = UpstreamSettings(url=DEFAULT_URLS["order"])
    payment: UpstreamSettings = UpstreamSettings(url=DEFAULT_URLS["payment"])
    availability: UpstreamSettings = UpstreamSettings(url=DEFAULT_URLS["availability"])

    @model_validator(mode="before")
    @classmethod
    def _default_urls(cls, data: Any) -> Any:
        """A backend section given without `url` keeps that backend's default URL."""
        if isinstance(data, dict):
            for name, url in DEFAULT_URLS.items():
                section = data.get(name)
                if isinstance(section, dict) and "url" not in section:
                    data[name] = {**section, "url": url}
        return data

    def get(self, backend: str) -> UpstreamSettings:
        value: UpstreamSettings = getattr(self, backend)
        return value


class ServerSettings(_Model):
    host: str = "0.0.0.0"
    # Proxies in front (the ingress, a load balancer) whose X-Forwarded-For is believed:
    # behind them, a client's address (for per-address bounds) is the rightmost hop that
    # is not one of them. Empty: the peer's address, whatever a request says.
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, list):
            return value  # the list check says what is wrong
        try:
            return [ipaddress.ip_network(str(item), strict=False) for item in value]
        except ValueError:
            raise ValueError("must be addresses or networks, e.g. 10.0.0.0/8 or ::1") from None
    port: WholeInt = Field(8080, ge=0, le=65535)
    workers: WholeInt = Field(1, ge=1, le=64)
    # Connections the kernel completes and queues for the gateway to accept. Too short a
    # queue under a connection storm drops SYNs, and clients retry after 1, 3, 7... s:
    # seconds of latency the gateway never sees. The kernel caps it at net.core.somaxconn.
    listen_backlog: WholeInt = Field(4096, ge=16, le=65_535)
    max_body_bytes: WholeInt = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # After SIGTERM the gateway keeps serving with /readyz at 503 for this long,
    # so load balancers stop routing to it before it closes its listener.
    drain_delay_s: float = Field(0.0, ge=0, le=120)
    # Upper bound on how long in-flight requests may take to finish after that.
    drain_timeout_s: float = Field(20.0, ge=0, le=600)
    # After answering a request early (body too large, wrong content type), the
    # rest of its body is read and dropped for at most this long before the
    # connection closes, so the client reliably receives the answer instead of
    # a reset. The answer itself is sent at once, before any of that reading.
    lingering_s: float = Field(1.0, ge=0, le=30)
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Hostile-input limits (docs/security.md says why these values). A request over
    # one is refused by the HTTP parser, before routing, as problem+json.
    max_url_bytes: WholeInt = Field(4096, ge=256, le=65_536)
    max_header_bytes: WholeInt = Field(8190, ge=1024, le=65_536)  # one header line, name and value
    max_headers: WholeInt = Field(64, ge=16, le=1000)
    # Bytes of unfinished request heads a process holds across all its connections; past
    # it, a head still arriving is refused with 503 OVERLOADED (the parser's copies make
    # the memory about twice this: docs/security.md).
    max_buffered_head_bytes: WholeInt = Field(64 * 1024 * 1024, ge=1024 * 1024, le=4 * 1024**3)
    # A request head (line and headers) must arrive within this, counted from its
    # first byte (or from the connection's opening): slowloris is cut off with 408.
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    # The body of a JSON request must arrive within this once its head is in.
    body_timeout_s: float = Field(10.0, gt=0, le=300)
    # An idle keep-alive connection is closed after this; above the 60 s idle timeout
    # of common load balancers, so they never reuse a connection the gateway closed.
    keepalive_s: float = Field(75.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_head_fits(self) -> ServerSettings:
        largest = self.max_url_bytes + self.max_headers * self.max_header_bytes
        if self.max_buffered_head_bytes < largest:
            raise ValueError(f"max_buffered_head_bytes: must hold at least one head of the "
                             f"largest size the other limits allow ({largest} bytes)")
        return self


class AdminSettings(_Model):
    # None disables the admin API (it answers 404), as the contract asks for `serve`.
    # Short tokens are accepted (test rigs use them) but logged as a warning at start.
    token: str | None = Field(None, min_length=1)
    # Rotation: the token being replaced stays valid beside the new one until removed.
    previous_token: str | None = Field(None, min_length=1)
    # A port of its own for /admin/* (on `host`), so a Service or firewall can expose
    # only the public port; then the public port answers /admin/* with 404.
    port: WholeInt | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"
    # Per remote address, two buckets of these figures: one for failed secret checks (the
    # admin token, X-Maintenance-Bypass, client API keys: slows guessing), one for admin
    # requests with the right token (bounds an SRE's script); neither spends the other.
    rate_per_s: float = Field(50.0, gt=0, le=10_000)
    burst: WholeInt = Field(200, ge=1, le=100_000)

    @model_validator(mode="after")
    def _previous_needs_current(self) -> AdminSettings:
        if self.previous_token is not None and self.token is None:
            raise ValueError("previous_token: needs a token (the one replacing it)")
        if self.previous_token is not None and self.previous_token == self.token:
            raise ValueError("previous_token: must differ from token")
        return self


class ApiKeySettings(_Model):
    """One client credential: only the SHA-256 of the key is configured, never the key."""

    client_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["client", "reader"] = "client"
    tier: str = Field("default", pattern=r"^[A-Za-z0-9_-]{1,64}$")


class AuthSettings(_Model):
    # With keys configured (here, or added through the admin API when `required`),
    # every public API route needs `X-API-Key`; the client id, role and rate-limit
    # tier come from the key, and a client-sent X-Client-ID is ignored.
    api_keys: list[ApiKeySettings] = []
    # Require keys even while none is configured yet (they will come through the
    # admin API, kept in the shared store). False with no keys: the demo's open API.
    required: bool = False

    @property
    def enabled(self) -> bool:
        return self.required or bool(self.api_keys)

    @model_validator(mode="after")
    def _distinct_keys(self) -> AuthSettings:
        hashes = [key.key_sha256 for key in self.api_keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("api_keys: the same key_sha256 is configured twice")
        return self


class CorsSettings(_Model):
    # Exact origins (scheme://host[:port]) whose pages may call the public API from a
    # browser. Empty: no cross-origin access at all. There is no wildcard on purpose.
    allow_origins: list[str] = []
    allow_headers: list[str] = ["Content-Type", "Idempotency-Key", "X-Request-ID",
                                "X-API-Key", "X-Client-ID", "Accept-Language",
                                "X-Request-Timeout-Ms", "X-Queue-Pass", "X-Queue-Ticket"]
    expose_headers: list[str] = ["X-Request-ID", "Retry-After", "Idempotent-Replayed",
                                 "X-Gateway-Stale", "Content-Language", "X-Queue-Pass",
                                 "X-Queue-Ticket"]
    max_age_s: WholeInt = Field(600, ge=0, le=86_400)

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        return origins(values)


# What an origin looks like, as the published schema says it; `origins` checks the rest.
ORIGIN_PATTERN = (r"^https?://[A-Za-z0-9.-]+(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}"
                  r"|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$")


def origins(values: list[str]) -> list[str]:
    """Exact origins (scheme://host[:port]), lower-cased; anything else refused."""
    for value in values:
        parts = urlsplit(value)
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username
                or parts.path or parts.query or parts.fragment or value != value.strip()):
            raise ValueError(f"{value!r} is not an origin like https://shop.example.com")
    return [value.lower() for value in values]


class SecurityHeadersSettings(_Model):
    # Strict-Transport-Security on every answer; turn on where TLS ends in front of
    # the gateway and every client reaches it over HTTPS only.
    hsts_max_age_s: WholeInt = Field(0, ge=0, le=2 * 365 * 86_400)


MAX_REPLICA_ACKS = 5


class RedisSettings(_Model):
    url: str | None = None
    # Each Redis call's own budget: a slow Redis must not hold requests hostage.
    timeout_s: float = Field(0.25, gt=0, le=10)
    # How often each process picks up SRE changes (breakers) made on another one.
    sync_interval_s: float = Field(0.5, gt=0, le=10)
    # How many replicas must hold a keyed POST's claim before it is forwarded, and its
    # answer before the client gets it (Redis WAIT). "auto": 1 with a redis+sentinel:// URL
    # or while the master reports a connected replica, else 0. An integer fixes it, so an
    # operator can demand a replica and fail closed without one (docs/deploy.md).
    min_replica_acks: Literal["auto"] | WholeInt = "auto"
    # How long a write waits for those replicas; a claim not held by then is withdrawn
    # and answered 503 STATE_UNAVAILABLE with nothing forwarded.
    replica_ack_timeout_ms: Annotated[int, Field(ge=1, le=5000), ACCEPT_WHOLE_FLOATS] = 200

    @field_validator("min_replica_acks", mode="before")
    @classmethod
    def _replica_count(cls, value: object) -> object:
        if value == "auto":
            return value
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 <= value <= MAX_REPLICA_ACKS or value != int(value)):
            raise ValueError(f'must be "auto" or a whole number of replicas from 0 to '
                             f"{MAX_REPLICA_ACKS}")
        return int(value)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if urlsplit(value).scheme not in ("redis", "rediss", "unix", redis_sentinel.SCHEME):
            raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
        redis_sentinel.parse(value)  # a bad sentinel URL says what it lacks
        return value


class IdempotencySettings(_Model):
    # False turns records off: keys are still required and passed on, and only the
    # backends' own deduplication protects resubmissions. For measuring the cost
    # of idempotency and for emergencies; logged as a warning at start.
    enabled: bool = True
    # How long a key's record (and its stored answer) is kept after first use.
    ttl_s: WholeInt = Field(24 * 3600, ge=1, le=30 * 24 * 3600)
    # A record whose answer is a 4xx (refused: nothing made, nothing charged) is kept this
    # long from its answer (never longer than ttl_s): a flood of refused submissions must
    # not fill the store that every client's payments need.
    ttl_4xx_s: WholeInt = Field(3600, ge=1, le=30 * 24 * 3600)
    # At most this many such records per client scope, and per client address (behind
    # server.trusted_proxies), in any ttl_4xx_s (a bucket refilled at that rate); past
    # either, that scope's or address's keyed POSTs get 429 RATE_LIMITED, nothing stored
    # or forwarded. Answers that made something (2xx) never count.
    max_4xx_per_scope: WholeInt = Field(1000, ge=1, le=10_000_000)
    max_4xx_per_address: WholeInt = Field(1000, ge=1, le=10_000_000)
    # How long a claim protects a request in flight. If the claiming process
    # dies, another takes the key over only after this, and asks the backend
    # first. Must outlast the longest a claim is held (see Settings below).
    lease_s: float = Field(30.0, gt=0, le=3600)
    # 0: a duplicate of a request still in flight is answered 409 at once; else
    # it waits up to this long for the first to finish and returns its answer.
    wait_for_in_flight_ms: WholeInt = Field(0, ge=0, le=60_000)
    # With the shared store down, payments are always refused (503); orders are
    # too unless this is true, when they are forwarded without a record and
    # only the order backend's own key deduplication protects them.
    orders_fail_open: bool = False
    # Bound of the in-memory store (single process); the oldest records go first.
    memory_max_records: WholeInt = Field(100_000, ge=100)


DEFAULT_MIN_IN_FLIGHT = 64


class OverloadSettings(_Model):
    # False turns admission control and the bulkheads off (deadlines stay): for
    # measuring what they cost, and for emergencies; logged as a warning.
    enabled: bool = True
    # Proxied requests one process takes on at once, counted from when their head
    # is read, all routes together. The limit moves between these two with the
    # measured queueing delay (see admission.py).
    max_in_flight: WholeInt = Field(1000, ge=1, le=1_000_000)
    # Unset: 64, or max_in_flight if that is lower.
    min_in_flight: WholeInt | None = Field(None, ge=1, le=1_000_000)
    # Share of the limit each priority may fill; writes may fill all of it, so
    # browsing is refused first, then reads, then order and payment submissions.
    browse_share: float = Field(0.7, gt=0, le=1)
    read_share: float = Field(0.85, gt=0, le=1)
    # The queueing delay (arrival to handler, and event-loop lag) the limit aims at.
    queue_delay_target_ms: float = Field(30.0, gt=0, le=60_000)
    # A request that waited longer than this before its handler is refused (503).
    queue_delay_max_ms: float = Field(500.0, gt=0, le=600_000)
    # A client refused again before the Retry-After of its last 503 ended gets the
    # refusal when it ends, told to wait twice as long. False: every refusal at once
    # (for measuring what a refusal costs; a crowd retrying in a loop then burns the CPU).
    hold_early_retries: bool = True
    # Overall budget of one request; a client may ask for less (X-Request-Timeout-Ms).
    request_deadline_s: float = Field(10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _reads_before_browsing(self) -> OverloadSettings:
        if self.read_share < self.browse_share:
            raise ValueError("read_share: must be at least browse_share (browsing is shed first)")
        if self.min_in_flight is not None and self.min_in_flight > self.max_in_flight:
            raise ValueError("min_in_flight: must be at most max_in_flight")
        if self.queue_delay_max_ms < self.queue_delay_target_ms:
            raise ValueError("queue_delay_max_ms: must be at least queue_delay_target_ms")
        return self

    @property
    def floor_in_flight(self) -> int:
        """The lowest the admission limit goes."""
        if self.min_in_flight is not None:
            return self.min_in_flight
        return min(DEFAULT_MIN_IN_FLIGHT, self.max_in_flight)


class TierSettings(_Model):
    rate_per_s: float = Field(gt=0, le=1_000_000)
    burst: WholeInt = Field(20, ge=1, le=1_000_000)


class RateLimitSettings(_Model):
    # Per client scope (the API key's client, else X-Client-ID; anonymous clients
    # share one): a token bucket refilled at rate_per_s up to burst. None: the
    # default tier is not limited.
    rate_per_s: float | None = Field(None, gt=0, le=1_000_000)
    burst: WholeInt = Field(20, ge=1, le=1_000_000)
    # Named tiers for API keys (`auth.api_keys[].tier`); a key without one is `default`.
    tiers: dict[str, TierSettings] = {}
    # Bound of the in-memory buckets (no Redis); least recently used go first.
    memory_max_clients: WholeInt = Field(100_000, ge=100)

    @property
    def tier_names(self) -> tuple[str, ...]:
        """The tiers an API key may name: `default` and the configured ones."""
        return ("default", *(name for name in self.tiers if name != "default"))


class StaleCacheSettings(_Model):
    # A kept availability answer older than this is never served in place of an error.
    max_age_s: float = Field(60.0, ge=0, le=3600)
    # Bound of the cache per process (about 1 KiB each); least recently stored go first.
    max_entries: WholeInt = Field(10_000, ge=0, le=1_000_000)


class MaintenanceMessage(_Model):
    """An announcement in English, Simplified and Traditional Chinese. A text given stands
    as written; Chinese given in one script is converted to the other (OpenCC, when the
    window is set); English alone stands in for Chinese, and Chinese for English."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    en: str | None = Field(None, min_length=1, max_length=1000)
    zh_cn: str | None = Field(None, alias="zh-CN", min_length=1, max_length=1000)
    zh_hant: str | None = Field(None, alias="zh-Hant", min_length=1, max_length=1000)


class MaintenanceWindowSettings(_Model):
    """A maintenance window, as the admin API takes it and as the config file declares it.

    `scope`: `all`, a backend (`order`, `payment`, `availability`), or a route as
    in /openapi.json, with or without its method (`POST /v1/payments`,
    `/v1/orders/{order_id}`). Times are ISO-8601; one without a UTC offset is
    taken as UTC. No `starts_at`: from now. No `ends_at`: until cleared.
    """

    scope: str = Field(min_length=1, max_length=200, json_schema_extra=scopes.publish_choices)
    read_only: StrictBool = False
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    message: MaintenanceMessage = MaintenanceMessage()

    @field_validator("scope")
    @classmethod
    def _known_scope(cls, value: str) -> str:
        return scopes.check(value)

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _utc(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        starts_at = info.data.get("starts_at")
        if info.field_name == "ends_at" and starts_at is not None and value <= starts_at:
            raise ValueError("must be after starts_at")
        return value


class MaintenanceSettings(_Model):
    # Windows declared with a deploy; each process enforces them from start-up.
    # One ended through the admin API stays ended (with Redis, on every process).
    windows: list[MaintenanceWindowSettings] = []


ROOM_NEEDS_REDIS = ("with server.workers > 1 the room needs redis.url, or each worker would "
                    "let in admit_per_s of its own")


class WaitingRoomSettings(_Model):
    """The virtual waiting room of promotional peaks (docs/operations.md, "Waiting room").

    `routes` uses the maintenance scope syntax. `admit_per_s` is fleet-wide with
    Redis (per process without). `secret` signs tickets and passes; every replica
    must share it (env `GATEWAY_QUEUE_SECRET`). Without one, a process makes its own,
    or, with Redis, all processes share one kept there.
    """

    enabled: StrictBool = False
    routes: list[Annotated[str, AfterValidator(scopes.check),
                           Field(json_schema_extra=scopes.publish_choices)]] = Field(
        ["POST /v1/orders"], min_length=1, max_length=50)
    admit_per_s: WholeInt = Field(50, ge=1, le=100_000)
    queue_all: StrictBool = False
    pass_ttl_s: float = Field(900.0, ge=1, le=86_400)
    # Covered submissions (distinct Idempotency-Keys) one pass lets through: one pass must
    # not take the pacing the room gives to everyone it admits. Past it, the pass counts as
    # none (with Redis unreachable, passes keep working, uncounted).
    pass_submissions: Annotated[int, Field(ge=1, le=10_000), ACCEPT_WHOLE_FLOATS] = 5
    # New tickets one client address (behind server.trusted_proxies) may take a minute,
    # fleet-wide with Redis: past it, 429 RATE_LIMITED.
    tickets_per_address_per_min: Annotated[int, Field(ge=1, le=1_000_000),
                                           ACCEPT_WHOLE_FLOATS] = 600
    # At least three poll intervals of a second, so one lost poll never costs a place.
    ticket_idle_s: float = Field(60.0, ge=3, le=3600)
    # Where the waiting page may send an admitted customer back to (`?return_to=`): exact
    # origins; a URL of any other origin is never redirected to.
    return_origins: list[Annotated[str, Field(pattern=ORIGIN_PATTERN, max_length=300)]] = Field(
        [], max_length=50)
    # A flash sale's start (ISO-8601; without an offset, UTC): until then every new customer
    # takes a pre-queue ticket and nobody is let in; at the start the pre-queue is drawn
    # by lot (docs/operations.md, "Scheduled sales").
    sale_starts_at: Instant | None = None
    secret: str | None = Field(None, min_length=16, max_length=256, repr=False)

    @field_validator("return_origins")
    @classmethod
    def _return_origins(cls, values: list[str]) -> list[str]:
        return origins(values)


# The samplers the OpenTelemetry specification names for OTEL_TRACES_SAMPLER.
Sampler = Literal["always_on", "always_off", "traceidratio", "parentbased_always_on",
                  "parentbased_always_off", "parentbased_traceidratio"]
DEFAULT_SAMPLE_RATIO = 0.01


class TracingSettings(_Model):
    """Distributed tracing (docs/operations.md, "Tracing"). Read from the standard
    `OTEL_*` variables, which win over the YAML, so the gateway drops into an existing
    OpenTelemetry deployment. The exporter's other `OTEL_EXPORTER_OTLP_*` variables
    (headers, timeout, certificates, compression) and `OTEL_BSP_*` are the SDK's to read.
    """

    exporter: Literal["otlp", "none"] = "none"
    # The collector's base URL (`/v1/traces` is appended) or the traces endpoint as given.
    endpoint: str | None = Field(None, pattern=r"^https?://")
    traces_endpoint: str | None = Field(None, pattern=r"^https?://")
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    service_name: str = Field("order-gateway", min_length=1, max_length=200)
    sampler: Sampler = "parentbased_traceidratio"
    # The ratio of the `traceidratio` samplers: 0.01 by default, as the contract says.
    sampler_arg: float = Field(DEFAULT_SAMPLE_RATIO, ge=0, le=1)
    schedule_delay_ms: WholeInt = Field(5000, ge=1, le=600_000)

    @property
    def enabled(self) -> bool:
        return self.exporter == "otlp"


class Settings(_Model):
    server: ServerSettings = ServerSettings()
    upstreams: UpstreamsSettings = UpstreamsSettings()
    admin: AdminSettings = AdminSettings()
    redis: RedisSettings = RedisSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    stale_cache: StaleCacheSettings = StaleCacheSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    overload: OverloadSettings = OverloadSettings()
    auth: AuthSettings = AuthSettings()
    cors: CorsSettings = CorsSettings()
    security_headers: SecurityHeadersSettings = SecurityHeadersSettings()
    waiting_room: WaitingRoomSettings = WaitingRoomSettings()
    tracing: TracingSettings = TracingSettings()

    @model_validator(mode="after")
    def _known_tiers(self) -> Settings:
        for i, key in enumerate(self.auth.api_keys):
            if key.tier not in self.rate_limit.tier_names:
                raise ValueError(f"auth.api_keys.{i}.tier: no such tier in rate_limit.tiers "
                                 f"({key.tier!r})")
        return self

    @model_validator(mode="after")
    def _admin_port_apart(self) -> Settings:
        if self.admin.port is not None and self.admin.port == self.server.port != 0:
            raise ValueError("admin.port: must differ from server.port")
        return self

    @model_validator(mode="after")
    def _workers_need_fixed_port(self) -> Settings:
        if self.server.workers > 1 and self.server.port == 0:
            raise ValueError("server.port: must be fixed (not 0) when server.workers > 1")
        return self

    @model_validator(mode="after")
    def _shared_room_needs_redis(self) -> Settings:
        if self.waiting_room.enabled and self.server.workers > 1 and self.redis.url is None:
            raise ValueError(f"waiting_room.enabled: {ROOM_NEEDS_REDIS}")
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_claim(self) -> Settings:
        """A claim is held for a lookup plus a forward, each bounded by the backend timeout,
        and for its two Redis steps (the claim and the answer), each with its replica wait."""
        redis = self.redis
        for name in IDEMPOTENT_BACKENDS:
            held = (2 * self.upstreams.get(name).timeout_s + 2 * redis.timeout_s
                    + 2 * redis.replica_ack_timeout_ms / 1000)
            if self.idempotency.lease_s <= held:
                raise ValueError(
                    f"idempotency.lease_s: must be more than {held:g} s (twice "
                    f"upstreams.{name}.timeout_s plus two Redis timeouts and two "
                    f"replica acknowledgement waits), so a claim cannot run out while its "
                    f"request is still in flight")
        return self


class SettingsError(Exception):
    """Configuration problems, one line each, ready to print."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# Environment variable -> key path in the settings tree.
ENV_KEYS: dict[str, tuple[str, ...]] = {
    "GATEWAY_HOST": ("server", "host"),
    "GATEWAY_PORT": ("server", "port"),
    "GATEWAY_WORKERS": ("server", "workers"),
    "GATEWAY_ORDER_URL": ("upstreams", "order", "url"),
    "GATEWAY_PAYMENT_URL": ("upstreams", "payment", "url"),
    "GATEWAY_AVAILABILITY_URL": ("upstreams", "availability", "url"),
    "GATEWAY_REDIS_URL": ("redis", "url"),
    "GATEWAY_ADMIN_TOKEN": ("admin", "token"),
    "GATEWAY_ADMIN_TOKEN_PREVIOUS": ("admin", "previous_token"),
    "GATEWAY_ADMIN_PORT": ("admin", "port"),
    "GATEWAY_QUEUE_SECRET": ("waiting_room", "secret"),
    "OTEL_TRACES_EXPORTER": ("tracing", "exporter"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("tracing", "endpoint"),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("tracing", "traces_endpoint"),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("tracing", "protocol"),
    "OTEL_SERVICE_NAME": ("tracing", "service_name"),
    "OTEL_TRACES_SAMPLER": ("tracing", "sampler"),
    "OTEL_TRACES_SAMPLER_ARG": ("tracing", "sampler_arg"),
    "OTEL_BSP_SCHEDULE_DELAY": ("tracing", "schedule_delay_ms"),
}


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read file ({exc.strerror})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsError([f"{path}: not valid YAML{where}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError([f"{path}: the top level must be a mapping of sections"])
    return data


# Values never repeated in an error line: it goes to logs and terminals.
_SECRET_KEYS = frozenset({"token", "previous_token", "secret"})


def _shown(loc: tuple[int | str, ...], value: Any) -> Any:
    """A refused value as an error line may quote it: secrets withheld, a URL's password
    masked."""
    if loc and loc[-1] in _SECRET_KEYS:
        return "(withheld)"
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.password is not None:
            return value.replace(f":{parts.password}@", ":***@", 1)
    return value


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        path = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            message = f"{message} (got {_shown(err['loc'], err['input'])!r})"
        lines.append(f"{path}: {message}" if path else message)
    return lines


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
) -> Settings:
    """Build the settings from file, environment and flags, or raise SettingsError."""
    env = os.environ if env is None else env
    path = path or env.get("GATEWAY_CONFIG") or None
    tree = _read_yaml(path) if path else {}
    for var, key_path in ENV_KEYS.items():
        if env.get(var):
            _set_path(tree, key_path, env[var])
    for key_path, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, key_path, value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc)) from exc
