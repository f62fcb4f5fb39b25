"""``python -m edgepub.services.log_collector``: edge pages into the pipeline log.

Env: EDGEPUB_NATS_URL/USER/PASSWORD, the EDGEPUB_COLLECTOR_* of ``config.py``. Run as many
as you like: they share the durable consumer ``log-collector``, and the server's check of
each append keeps every edge exactly once and in order among them. Each also sweeps the
edges' watermarks ahead of the pipeline log's byte eviction (``sweep``).
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from edgepub.shared import subjects
from edgepub.shared.runner import Consumer, ConsumerSpec
from edgepub.shared.service import Body, run, settings_or_exit

from .appender import Appender
from .config import CollectorSettings
from .handlers import Collector

NAME = "log-collector"
# A valid page is never given up (that would lose its rows): it is retried until it is
# appended or covered. Only a corrupt one is dropped, by the handler.
NEVER = 1 << 62


def consumer_spec(settings: CollectorSettings) -> ConsumerSpec:
    return ConsumerSpec(
        stream=subjects.PAGES_STREAM,
        durable=subjects.CONSUMER_LOG_COLLECTOR,
        filter_subjects=(subjects.PAGES_SUBJECTS,),
        ack_wait_s=settings.ack_wait_s,
        concurrency=settings.concurrency,
        max_ack_pending=settings.max_ack_pending,
        batch=settings.batch,
        max_deliver=NEVER,
        retry_max_s=5.0,
    )


def _raw(data: bytes) -> bytes:
    return data  # pages are checked by the handler, which can term them with a reason


def body_for(settings: CollectorSettings) -> Body:
    async def body(nc: NATS, js: JetStreamContext, stop: asyncio.Event) -> None:
        collector = Collector(Appender(nc, js, timeout_s=settings.append_timeout_s), settings)
        await asyncio.gather(
            Consumer(js, consumer_spec(settings), _raw, collector.handle).run(stop),
            collector.sweep.run(stop),
        )

    return body


def main() -> None:
    run(NAME, body_for(settings_or_exit(NAME, CollectorSettings.from_env)))


if __name__ == "__main__":
    main()
