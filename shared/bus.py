"""Connecting to NATS and making sure the streams, buckets and object store exist.

Every process connects through ``connect``: reconnects forever with short, jittered
waits, and says in the log when it loses and regains the broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

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
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from . import subjects
from .errors import ServiceUnavailableError
from .logs import register_secret
from .settings import NatsSettings

log = structlog.get_logger("edgepub.bus")

DAY = 24 * 3600.0


async def connect(
    settings: NatsSettings, *, name: str, connect_timeout: float = 5.0, first_attempts: int = 1
) -> NATS:
    """Connect, or raise ServiceUnavailableError naming the URL and the cause."""
    register_secret(settings.password)

    holder: list[NATS] = []

    async def on_disconnect() -> None:
        if holder and (holder[0].is_closed or holder[0].is_draining):
            return  # our own close, not a lost broker
        log.warning("nats_disconnected", client=name)

    async def on_reconnect() -> None:
        log.info("nats_reconnected", client=name)

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", client=name, error=str(exc))

    opts: dict[str, Any] = {
        "servers": [settings.url],
        "name": name,
        "connect_timeout": connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "allow_reconnect": True,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "error_cb": on_error,
    }
    if settings.user:
        opts["user"] = settings.user
        opts["password"] = settings.password or ""
    last: Exception | None = None
    for attempt in range(max(1, first_attempts)):
        try:
            nc = await nats.connect(**opts)
            holder.append(nc)
            return nc
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            last = exc
            if attempt + 1 < first_attempts:
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
    raise ServiceUnavailableError(
        f"cannot reach NATS at {settings.url} as {settings.user or 'anonymous'}: "
        f"{type(last).__name__}: {last}; is the stack running (edgepub up)?"
    ) from last


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create (or leave as they are) the streams every service relies on."""
    for cfg in (
        StreamConfig(
            name=subjects.WORK_STREAM,
            subjects=[subjects.WORK_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            max_age=7 * DAY,
            duplicate_window=120.0,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.EVENTS_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            max_age=7 * DAY,
            max_msgs_per_subject=64,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
    ):
        try:
            await js.stream_info(cfg.name or "")
        except NotFoundError:
            await js.add_stream(cfg)


KV_BUCKETS = (
    subjects.KV_MODELS,
    subjects.KV_PIPELINES,
    subjects.KV_PIPELINE_VERSIONS,
    subjects.KV_PUBLISHES,
    subjects.KV_REQUESTS,
    subjects.KV_COUNTERS,
)


async def ensure_buckets(js: JetStreamContext, *, replicas: int = 1) -> None:
    for bucket in KV_BUCKETS:
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(KeyValueConfig(bucket=bucket, history=5, replicas=replicas))
    await ensure_object_store(js, replicas=replicas)


async def ensure_object_store(js: JetStreamContext, *, replicas: int = 1) -> ObjectStore:
    """The model files bucket; the SDK calls this too, so an upload that races the services'
    first start does not fail on a missing bucket."""
    try:
        return await js.object_store(subjects.OBJECT_STORE_MODELS)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_object_store(
            subjects.OBJECT_STORE_MODELS,
            config=ObjectStoreConfig(storage=StorageType.FILE, replicas=replicas),
        )


async def ensure_all(js: JetStreamContext) -> None:
    await ensure_streams(js)
    await ensure_buckets(js)
