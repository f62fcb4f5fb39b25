"""The publish service's state in JetStream KV: typed records, optimistic concurrency.

Every write states the revision it read (``update(..., last=rev)``) or that the key must
not exist (``create``); a lost race surfaces as ``Conflict`` and the caller re-reads.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from edgepub.shared import subjects
from edgepub.shared.kv_table import Conflict, Table
from edgepub.shared.schemas import (
    ModelVersion,
    PipelineRecord,
    PipelineVersion,
    PublishRecord,
)

__all__ = ["Conflict", "Counters", "Requests", "State", "Table"]


class Counters:
    """Small integer ids (publish 4, pipeline version 10) allocated with CAS."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def next(self, name: str) -> int:
        while True:
            try:
                entry = await self._kv.get(name)
            except KeyNotFoundError:
                try:
                    await self._kv.create(name, b"1")
                    return 1
                except KeyWrongLastSequenceError:
                    continue
            value = int(entry.value or b"0") + 1
            try:
                await self._kv.update(name, str(value).encode(), last=entry.revision)
                return value
            except KeyWrongLastSequenceError:
                continue


class Requests:
    """request id -> publish id: the claim that makes a re-sent request create nothing twice."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def claim(self, request_id: str, publish_id: int) -> int:
        """Claim ``request_id`` for ``publish_id``; returns the id that owns it."""
        try:
            await self._kv.create(request_id, str(publish_id).encode())
            return publish_id
        except KeyWrongLastSequenceError:
            entry = await self._kv.get(request_id)
            return int(entry.value or b"0")

    async def owner(self, request_id: str) -> int | None:
        try:
            entry = await self._kv.get(request_id)
        except KeyNotFoundError:
            return None
        return int(entry.value or b"0")


class State(msgspec.Struct, frozen=True):
    models: Table[ModelVersion]
    pipelines: Table[PipelineRecord]
    versions: Table[PipelineVersion]
    publishes: Table[PublishRecord]
    requests: Requests
    counters: Counters

    @classmethod
    async def open(cls, js: JetStreamContext) -> State:
        return cls(
            models=Table(await js.key_value(subjects.KV_MODELS), ModelVersion),
            pipelines=Table(await js.key_value(subjects.KV_PIPELINES), PipelineRecord),
            versions=Table(await js.key_value(subjects.KV_PIPELINE_VERSIONS), PipelineVersion),
            publishes=Table(await js.key_value(subjects.KV_PUBLISHES), PublishRecord),
            requests=Requests(await js.key_value(subjects.KV_REQUESTS)),
            counters=Counters(await js.key_value(subjects.KV_COUNTERS)),
        )
