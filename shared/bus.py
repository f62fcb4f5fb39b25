"""Connecting to NATS and making sure the streams, buckets and object store exist.

Every process connects through ``connect``: reconnects forever with short, jittered
waits, and says in the log when it loses and regains the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from . import objects, subjects
from .errors import ConfigError, NotAuthorizedError, ServiceUnavailableError
from .logs import register_secret
from .settings import Env, NatsSettings
from .transient import TRANSIENT, backoff

log = structlog.get_logger("edgepub.bus")

DAY = 24 * 3600.0


class _Callbacks:
    """Connection callbacks that stay quiet until the first connect has succeeded: before
    that, ``connect`` itself reports the outcome in one error."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nc: NATS | None = None

    async def disconnected(self) -> None:
        nc = self.nc
        if nc is None or nc.is_closed or nc.is_draining:
            return  # not connected yet, or our own close: not a lost broker
        log.warning("nats_disconnected", client=self.name)

    async def reconnected(self) -> None:
        log.info("nats_reconnected", client=self.name)

    async def error(self, exc: Exception) -> None:
        if self.nc is not None:
            log.warning("nats_error", client=self.name, error=str(exc))


def _refused(exc: BaseException) -> bool:
    return "authorization violation" in str(exc).lower() or isinstance(
        exc, nats.errors.AuthorizationError
    )


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    connect_timeout: float = 2.0,
    wait_s: float = 3.0,
    nkey_seed: str | None = None,
    inbox_user: str | None = None,
    jetstream: bool = True,
) -> NATS:
    """Connect, then reconnect forever with short jittered waits once connected.

    The first connect is bounded: refused credentials raise NotAuthorizedError at once; an
    unreachable server is retried for ``wait_s`` and then raises ServiceUnavailableError; a
    server without JetStream raises too. Every message names the URL and the user (never
    the password) and says what to do. With ``nkey_seed`` the client proves an nkey (the
    token service's system-account user); ``inbox_user`` then names its inbox.
    """
    register_secret(settings.password)
    register_secret(nkey_seed)
    who = settings.user or inbox_user or "anonymous"
    callbacks = _Callbacks(name)
    opts: dict[str, Any] = {
        "servers": settings.servers,
        "name": name,
        "connect_timeout": connect_timeout,
        # The first connect is bounded here, not by nats-py (whose default first connect
        # retries a dead port 60 times, and -1 retries forever).
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.25,
        "disconnected_cb": callbacks.disconnected,
        "reconnected_cb": callbacks.reconnected,
        "error_cb": callbacks.error,
    }
    if settings.user:
        opts["user"] = settings.user
        opts["password"] = settings.password or ""
        opts["inbox_prefix"] = subjects.inbox_prefix(settings.user)
    if nkey_seed:
        opts["nkeys_seed_str"] = nkey_seed
    if inbox_user:
        opts["inbox_prefix"] = subjects.inbox_prefix(inbox_user)
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        try:
            nc = await nats.connect(**opts)
            break
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if _refused(exc):
                raise NotAuthorizedError(
                    f"NATS at {settings.url} refused user {who!r}: wrong user or password; "
                    "check EDGEPUB_NATS_USER/EDGEPUB_NATS_PASSWORD (or the stack's stack.json)"
                ) from None
            if time.monotonic() + backoff(attempt, cap=1.0) >= deadline:
                raise ServiceUnavailableError(
                    f"cannot reach NATS at {settings.url} as {who!r} within {wait_s:g}s: "
                    f"{type(exc).__name__}: {exc}; is the stack running (edgepub up), "
                    "or is EDGEPUB_NATS_URL right?"
                ) from None
            await asyncio.sleep(backoff(attempt, cap=1.0))
            attempt += 1
    if jetstream and not nc._server_info.get("jetstream"):
        await nc.close()
        raise ServiceUnavailableError(
            f"NATS at {settings.url} has no JetStream; start nats-server with JetStream "
            "enabled (-js, or a jetstream {} block; edgepub up does this)"
        )
    # Connected: from now on ride out any outage.
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    callbacks.nc = nc
    return nc


# --- what the publish service owns, as data: every stream and bucket is bounded ----------
# Work and events are kept 7 days (a watcher that comes back later reads the record
# instead); events keep at most 16 states per publish (a publish passes through 4) and
# 1 GiB in all. Request ids are remembered 24 h: a re-sent request (the SDK re-sends for
# at most 30 s) finds its publish; past that nobody re-sends. Uploads nobody took (an SDK
# that died midway) are dropped after 24 h. Records (models, pipelines, versions, publishes)
# are the product's data: kept, 5 revisions each; counters keep their latest only.
WORK_MAX_AGE_S = 7 * DAY
EVENTS_MAX_AGE_S = 7 * DAY
EVENTS_PER_PUBLISH = 16
EVENTS_MAX_BYTES = 1 << 30
REQUEST_TTL_S = DAY
UPLOAD_MAX_AGE_S = DAY
RECORD_HISTORY = 5
# Inference logs. Pages wait for the collector (a work queue: a page leaves once appended),
# 7 days and 2 GiB at most; the pipeline log keeps 30 days and 5 GiB. Watermarks outlive
# both: Nats-TTL: never exempts them from max_age, and the collectors re-roll each one to
# the tail before max_bytes eviction reaches it (services/log_collector/sweep.py), which
# needs the log to take in less than half its max_bytes per sweep. JetStream reserves each
# stream's max_bytes in the server's store (the embedded stack's is 10 GiB), so the bounds
# must add up within it.
PAGES_MAX_AGE_S = 7 * DAY
PAGES_MAX_BYTES = 2 << 30
PAGES_DUPLICATE_WINDOW_S = 120.0
LOGS_MAX_AGE_S = 30 * DAY
LOGS_MAX_BYTES = 5 << 30
# nats-server's default duplicate window, which must not exceed max_age; the collector's
# appends carry no message id (the watermark's check keeps them once), so it is only bounded.
LOGS_DUPLICATE_WINDOW_S = 120.0


class LogLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The inference logs' retention, configuration of the publish service (which creates
    the streams): ``EDGEPUB_LOGS_MAX_AGE_S``, ``EDGEPUB_LOGS_MAX_BYTES``,
    ``EDGEPUB_PAGES_MAX_AGE_S``, ``EDGEPUB_PAGES_MAX_BYTES``,
    ``EDGEPUB_PAGES_DUPLICATE_WINDOW_S``. Watermarks outlive the logs' age (exempt) and
    bytes (re-rolled by the collectors' sweep)."""

    logs_max_age_s: float = LOGS_MAX_AGE_S
    logs_max_bytes: int = LOGS_MAX_BYTES
    pages_max_age_s: float = PAGES_MAX_AGE_S
    pages_max_bytes: int = PAGES_MAX_BYTES
    pages_duplicate_window_s: float = PAGES_DUPLICATE_WINDOW_S

    @classmethod
    def from_env(cls, env: Env | None = None) -> LogLimits:
        env = env or Env()
        limits = cls(
            logs_max_age_s=env.number("EDGEPUB_LOGS_MAX_AGE_S", LOGS_MAX_AGE_S),
            logs_max_bytes=env.integer("EDGEPUB_LOGS_MAX_BYTES", LOGS_MAX_BYTES),
            pages_max_age_s=env.number("EDGEPUB_PAGES_MAX_AGE_S", PAGES_MAX_AGE_S),
            pages_max_bytes=env.integer("EDGEPUB_PAGES_MAX_BYTES", PAGES_MAX_BYTES),
            pages_duplicate_window_s=env.number(
                "EDGEPUB_PAGES_DUPLICATE_WINDOW_S", PAGES_DUPLICATE_WINDOW_S
            ),
        )
        for name, value in msgspec.structs.asdict(limits).items():
            if value <= 0:
                raise ConfigError(f"EDGEPUB_{name.upper()}={value:g} must be more than 0")
        if limits.pages_duplicate_window_s > limits.pages_max_age_s:
            raise ConfigError(
                f"EDGEPUB_PAGES_DUPLICATE_WINDOW_S={limits.pages_duplicate_window_s:g} must not "
                f"exceed EDGEPUB_PAGES_MAX_AGE_S={limits.pages_max_age_s:g}"
            )
        return limits


MAX_REPLICAS = 5  # JetStream's own limit


def replicas_from_env(env: Env | None = None) -> int:
    """``EDGEPUB_REPLICAS``: copies of every stream, bucket and object store (1 on one
    server; 3 on a three-node cluster, so one node may die without losing a row)."""
    replicas = (env or Env()).integer("EDGEPUB_REPLICAS", 1)
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigError(f"EDGEPUB_REPLICAS={replicas} must be 1..{MAX_REPLICAS}")
    return replicas


def log_stream_configs(
    replicas: int = 1, limits: LogLimits | None = None
) -> tuple[StreamConfig, ...]:
    limits = limits or LogLimits()
    return (
        StreamConfig(
            name=subjects.PAGES_STREAM,
            subjects=[subjects.PAGES_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=limits.pages_max_age_s,
            max_bytes=limits.pages_max_bytes,
            duplicate_window=limits.pages_duplicate_window_s,
            storage=StorageType.FILE,
            num_replicas=replicas,
            allow_direct=True,  # the collector reads ahead for a page stored out of turn
        ),
        StreamConfig(
            name=subjects.LOGS_STREAM,
            subjects=[f"{subjects.LOGS_ROOT}.>", f"{subjects.WATERMARK_ROOT}.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=limits.logs_max_age_s,
            max_bytes=limits.logs_max_bytes,
            duplicate_window=min(LOGS_DUPLICATE_WINDOW_S, limits.logs_max_age_s),
            storage=StorageType.FILE,
            num_replicas=replicas,
            allow_rollup_hdrs=True,  # a watermark rolls its subject up to one message
            allow_msg_ttl=True,  # ... and is exempt from max_age (Nats-TTL: never)
            allow_atomic=True,  # a page and its watermark are appended as one batch
            allow_direct=True,
        ),
    )


def stream_configs(replicas: int = 1) -> tuple[StreamConfig, ...]:
    return (
        StreamConfig(
            name=subjects.WORK_STREAM,
            subjects=[subjects.WORK_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            max_age=WORK_MAX_AGE_S,
            duplicate_window=120.0,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            max_age=EVENTS_MAX_AGE_S,
            max_msgs_per_subject=EVENTS_PER_PUBLISH,
            max_bytes=EVENTS_MAX_BYTES,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
    )


def bucket_configs(replicas: int = 1) -> tuple[KeyValueConfig, ...]:
    records = (
        subjects.KV_MODELS,
        subjects.KV_PIPELINES,
        subjects.KV_PIPELINE_VERSIONS,
        subjects.KV_PUBLISHES,
    )
    return (
        *(KeyValueConfig(bucket=b, history=RECORD_HISTORY, replicas=replicas) for b in records),
        KeyValueConfig(
            bucket=subjects.KV_REQUESTS, history=1, ttl=REQUEST_TTL_S, replicas=replicas
        ),
        KeyValueConfig(bucket=subjects.KV_COUNTERS, history=1, replicas=replicas),
        # edges: a few revisions (add, join, move); what each last reported: only the last
        KeyValueConfig(bucket=subjects.KV_EDGES, history=RECORD_HISTORY, replicas=replicas),
    )


def object_store_configs(replicas: int = 1) -> tuple[ObjectStoreConfig, ...]:
    return (
        ObjectStoreConfig(
            bucket=subjects.OBJECT_STORE_MODELS, storage=StorageType.FILE, replicas=replicas
        ),
        ObjectStoreConfig(
            bucket=subjects.OBJECT_STORE_UPLOADS,
            storage=StorageType.FILE,
            replicas=replicas,
            ttl=UPLOAD_MAX_AGE_S,
        ),
    )


# What ensure_* reconcile on a stream that exists: its replicas, bounds and the features
# edgepub relies on (a stream's storage, retention and name cannot change in place).
_OWNED = (
    "subjects",
    "num_replicas",
    "max_age",
    "max_bytes",
    "max_msgs_per_subject",
    "duplicate_window",
    "allow_rollup_hdrs",
    "allow_msg_ttl",
    "allow_atomic",
    "allow_direct",
)


def _wanted(cfg: StreamConfig) -> dict[str, Any]:
    want = {f: getattr(cfg, f) for f in _OWNED if getattr(cfg, f) is not None}
    if not want.get("duplicate_window"):  # 0: the server's default (2 min) was asked for
        want.pop("duplicate_window", None)
    return want


async def reconcile(js: JetStreamContext, stream: str, want: dict[str, Any]) -> dict[str, Any]:
    """Make the existing ``stream`` have ``want`` (field -> value) where it differs, keeping
    everything else as the server holds it; what changed (logged)."""
    have = (await js.stream_info(stream)).config
    changed = {f: v for f, v in want.items() if getattr(have, f) != v}
    if changed:
        await js.update_stream(dataclasses.replace(have, **changed))
        log.info("stream_updated", stream=stream, **{f: str(v) for f, v in changed.items()})
    return changed


async def ensure_streams(
    js: JetStreamContext, *, replicas: int = 1, logs: LogLimits | None = None
) -> None:
    """Create the streams every service relies on, or bring existing ones to this
    configuration (replicas, limits: ``logs`` and the constants above)."""
    for cfg in (*stream_configs(replicas), *log_stream_configs(replicas, logs)):
        try:
            await reconcile(js, cfg.name or "", _wanted(cfg))
        except NotFoundError:
            await js.add_stream(cfg)


async def ensure_buckets(js: JetStreamContext, *, replicas: int = 1) -> None:
    for kv in bucket_configs(replicas):
        want = {
            "num_replicas": kv.replicas,
            "max_msgs_per_subject": kv.history,
            "max_age": kv.ttl or 0.0,
        }
        try:
            await reconcile(js, f"KV_{kv.bucket}", want)
        except NotFoundError:
            await js.create_key_value(kv)
    await ensure_object_store(js, replicas=replicas)


async def ensure_object_store(js: JetStreamContext, *, replicas: int = 1) -> None:
    """The verified model files, and the upload area SDK users write into."""
    for cfg in object_store_configs(replicas):
        want = {"num_replicas": cfg.replicas, "max_age": cfg.ttl or 0.0}
        try:
            await reconcile(js, objects.stream_of(cfg.bucket or ""), want)
        except NotFoundError:
            await js.create_object_store(cfg.bucket or "", config=cfg)


async def ensure_all(
    js: JetStreamContext, logs: LogLimits | None = None, *, replicas: int = 1
) -> None:
    """Everything the publish service owns (it is the one service allowed to create it),
    with ``replicas`` copies of each (1 on one server, 3 on a cluster)."""
    await ensure_streams(js, logs=logs, replicas=replicas)
    await ensure_buckets(js, replicas=replicas)


NOT_YET: tuple[type[BaseException], ...] = (NotFoundError, *TRANSIENT)


async def wait_for_stream(js: JetStreamContext, stream: str, stop: asyncio.Event) -> bool:
    """Wait until ``stream`` exists (its owner creates it), saying so every few seconds.
    False if ``stop`` came first."""
    started = time.monotonic()
    said = 0.0
    while not stop.is_set():
        try:
            await js.stream_info(stream)
            return True
        except NOT_YET:  # not created yet, or no leader to say so yet
            waited = time.monotonic() - started
            if waited - said >= 5.0 or said == 0.0:
                log.info("waiting_for_stream", stream=stream, waited_s=round(waited, 1))
                said = waited or 0.001
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await stop.wait()
    return False
