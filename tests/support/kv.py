"""Reading the publish service's KV state straight from JetStream, for assertions."""

from __future__ import annotations

import asyncio

from nats.js.errors import NoKeysError

from edgepub.shared import bus, subjects
from edgepub.shared.schemas import PublishRecord, decode

from .servers import NatsServer


async def _publish_records(nats: NatsServer) -> list[PublishRecord]:
    nc = await bus.connect(nats.settings("publish"), name="test-kv")
    try:
        kv = await nc.jetstream().key_value(subjects.KV_PUBLISHES)
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        records = [decode(PublishRecord, (await kv.get(k)).value or b"") for k in keys]
        return sorted(records, key=lambda r: r.id)
    finally:
        await nc.close()


def publish_records(nats: NatsServer) -> list[PublishRecord]:
    """Every publish record in KV, by id."""
    return asyncio.run(_publish_records(nats))
