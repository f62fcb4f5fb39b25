"""``python -m edgepub.services.registry_push``: push published pipelines to the registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from edgepub.shared import subjects
from edgepub.shared.errors import RegistryError
from edgepub.shared.oci import RegistryClient
from edgepub.shared.runner import Consumer, ConsumerSpec
from edgepub.shared.service import Body, run, settings_or_exit

from .cache import ModelCache, private_dir
from .config import PushSettings
from .handlers import PushHandler, decode_request

NAME = "registry-push"
log = structlog.get_logger("edgepub.registry_push")


async def report_registry(settings: PushSettings) -> None:
    """Say at start whether the registry answers; a push retries or fails on its own."""
    client = RegistryClient(settings.registry, timeout_s=settings.request_timeout_s)
    try:
        await asyncio.to_thread(client.check)
    except RegistryError as exc:
        log.warning("registry_check_failed", code=exc.code, error=exc.message)
    else:
        log.info("registry_ok", registry=client.settings.registry)
    finally:
        client.close()  # each push has its own session (session.PushSession)


def consumer_spec(settings: PushSettings) -> ConsumerSpec:
    """Fetch only the pushes it runs at once; the rest wait in the stream, not in hand."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.CONSUMER_REGISTRY_PUSH,
        filter_subjects=(subjects.PUBLISH_REQUESTED,),
        ack_wait_s=settings.ack_wait_s,
        concurrency=settings.concurrency,
        batch=settings.concurrency,
        max_deliver=settings.max_deliver,
        deadline_s=settings.registry.deadline_s,
        retry_max_s=settings.retry_max_s,
        grace_s=settings.stop_grace_s,
    )


def open_cache(js: JetStreamContext, settings: PushSettings) -> ModelCache:
    """The cache directory, private (0700) and trimmed to its bound; blocking."""
    root = private_dir(Path(settings.cache_dir))
    cache = ModelCache(js, root / "models", settings.cache_max_bytes)
    swept = cache.sweep()
    evicted = cache.trim()
    log.info(
        "cache_ready",
        path=str(cache.root),
        max_bytes=cache.max_bytes,
        files=len(cache.entries()),
        swept=swept,
        evicted=len(evicted),
    )
    return cache


def body_for(settings: PushSettings) -> Body:
    async def body(nc: NATS, js: JetStreamContext, stop: asyncio.Event) -> None:
        cache = await asyncio.to_thread(open_cache, js, settings)
        await report_registry(settings)
        # retries count to the deadline by the broker's clock, as the runner does
        handler = PushHandler(js, cache, settings, clock=lambda: consumer.now())
        consumer = Consumer(
            js, consumer_spec(settings), decode_request, handler, handler.dead_letter
        )
        await consumer.run(stop)

    return body


def main() -> None:
    run(NAME, body_for(settings_or_exit(NAME, PushSettings.from_env)))


if __name__ == "__main__":
    main()
