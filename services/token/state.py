"""The token service's state in JetStream KV: ``edge.<name>`` records and ``seen.<name>``
reports in the edges bucket, and the publish records it reads (never writes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from nats.js import JetStreamContext

from edgepub.shared import subjects
from edgepub.shared.edge_messages import EdgeRecord, EdgeSeen
from edgepub.shared.kv_table import Conflict, Table
from edgepub.shared.schemas import PublishRecord

__all__ = ["Conflict", "EdgeState"]


def record_key(name: str) -> str:
    return f"edge.{subjects.token(name)}"


def seen_key(name: str) -> str:
    return f"seen.{subjects.token(name)}"


class EdgeState(msgspec.Struct, frozen=True):
    records: Table[EdgeRecord]
    seen: Table[EdgeSeen]
    publishes: Table[PublishRecord]

    @classmethod
    async def open(cls, js: JetStreamContext) -> EdgeState:
        edges = await js.key_value(subjects.KV_EDGES)
        return cls(
            records=Table(edges, EdgeRecord),
            seen=Table(edges, EdgeSeen),
            publishes=Table(await js.key_value(subjects.KV_PUBLISHES), PublishRecord),
        )

    async def record(self, name: str) -> tuple[EdgeRecord, int] | None:
        return await self.records.get(record_key(name))

    async def last_seen(self, name: str) -> EdgeSeen | None:
        got = await self.seen.get(seen_key(name))
        return got[0] if got else None

    async def publish(self, publish_id: int) -> PublishRecord | None:
        got = await self.publishes.get(str(publish_id))
        return got[0] if got else None

    def all_records(self) -> AsyncIterator[EdgeRecord]:
        return self.records.scan("edge.*")

    async def all_seen(self) -> dict[str, EdgeSeen]:
        out: dict[str, EdgeSeen] = {}
        async for key, seen in self.seen.scan_items("seen.*"):
            out[key.removeprefix("seen.")] = seen
        return out
