"""Inference log rows and the in-process hand-off that carries them off the hot path.

Every inference request produces one ``InferenceEvent`` (columnar: n records at once, so
the request path allocates one object, not n). ``rows_of`` splits it into the per-record
``InferenceLogRow``s a local log stores. ``LogHandoff.offer`` never blocks and never
waits on disk or network: when the queue holds its count of events, or its bytes (an event
weighs what its request body and outputs took), the event is dropped and counted.
A ``LocalLog`` (``local_log.SqliteLog``) receives batches from ``pump``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np

ROW_VERSION = 1


class ModelUsed(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A step that served the inference: ``[name, version, sha256]``."""

    name: str
    version: str
    sha256: str


class InferenceEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One request's inference: ``inputs``/``outputs`` map a tensor name to n records.

    Not tracked by the cycle collector (it holds no cycles): events wait in the hand-off,
    and untracked they cost the collector nothing while they do.
    """

    time: int  # epoch milliseconds when the request arrived
    pipeline: str
    pipeline_version: str
    records: int
    inputs: Mapping[str, Any]  # name -> list or ndarray, first dimension = records
    outputs: Mapping[str, Any]
    elapsed_ns: Sequence[int]  # per step
    model_versions: tuple[ModelUsed, ...]
    partition: str


class InferenceLogRow(msgspec.Struct, frozen=True, kw_only=True):
    """One record's inference, as the local log stores it and Ops receives it."""

    v: int = ROW_VERSION
    time: int
    pipeline: str
    pipeline_version: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    elapsed_ns: tuple[int, ...]
    model_versions: tuple[ModelUsed, ...]
    partition: str


def _item(value: Any, index: int) -> Any:
    item = value[index]
    return item.tolist() if isinstance(item, np.ndarray | np.generic) else item


def rows_of(event: InferenceEvent) -> list[InferenceLogRow]:
    """The per-record rows of one event, in record order."""
    return [
        InferenceLogRow(
            time=event.time,
            pipeline=event.pipeline,
            pipeline_version=event.pipeline_version,
            inputs={name: _item(col, i) for name, col in event.inputs.items()},
            outputs={name: _item(col, i) for name, col in event.outputs.items()},
            elapsed_ns=tuple(event.elapsed_ns),
            model_versions=event.model_versions,
            partition=event.partition,
        )
        for i in range(event.records)
    ]


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


row_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
row_decoder = msgspec.msgpack.Decoder(InferenceLogRow)


class LocalLog(Protocol):
    """Where events go after the hand-off (the SQLite log, in a later issue)."""

    async def write(self, events: Sequence[InferenceEvent]) -> None: ...


@runtime_checkable
class CountsDrops(Protocol):
    """A local log that records the hand-off's drops as a gap (``SqliteLog``)."""

    def note_dropped(self, count: int) -> None: ...


class DiscardLog:
    """The local log while none is configured: counts what it was given."""

    def __init__(self) -> None:
        self.events = 0
        self.rows = 0

    async def write(self, events: Sequence[InferenceEvent]) -> None:
        self.events += len(events)
        self.rows += sum(e.records for e in events)


class LogHandoff:
    """A bounded FIFO between the request path (``offer``) and one consumer (``take``),
    bounded in events and in bytes: 10,000 queued events could otherwise pin 10,000
    request bodies.

    Used from the event loop's thread only. ``offer`` is O(1) and never awaits.
    """

    def __init__(self, capacity: int, max_bytes: int = 64 << 20) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.offered = 0
        self.dropped = 0
        self.dropped_records = 0  # the dropped events' records: a gap line's exact count
        self.queued_bytes = 0
        self._items: collections.deque[InferenceEvent] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drop_unseen = False

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, event: InferenceEvent, size: int = 0) -> bool:
        """Queue ``event`` of ``size`` bytes; when that would pass either bound, drop it,
        count it and return False."""
        items = self._items
        if len(items) >= self.capacity or self.queued_bytes + size > self.max_bytes:
            self.dropped += 1
            self.dropped_records += event.records
            self._drop_unseen = True  # the consumer must hear of it even with nothing queued
            if self._waiter is not None:
                self._wake()
            return False
        items.append(event)
        self._sizes.append(size)
        self.queued_bytes += size
        self.offered += 1
        if self._waiter is not None:
            self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_nowait(self, max_items: int) -> list[InferenceEvent]:
        items, sizes = self._items, self._sizes
        count = min(max_items, len(items))
        taken = [items.popleft() for _ in range(count)]
        self.queued_bytes -= sum(sizes.popleft() for _ in range(count))
        return taken

    async def take(self, max_items: int) -> list[InferenceEvent]:
        """Wait for at least one event, or a drop not yet seen (then the list may be empty:
        the consumer still records the drop); return up to ``max_items`` in order."""
        while not self._items and not self._drop_unseen:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._drop_unseen = False
        return self.take_nowait(max_items)


async def pump(
    handoff: LogHandoff, log: LocalLog, batch: int = 512, linger_s: float = 0.02, depth: int = 2
) -> None:
    """Move events from the hand-off to the local log until cancelled.

    After a partial batch it lingers briefly so that under load the log gets batches and
    the request path does not pay a consumer wake-up per inference. Up to ``depth``
    writes are in flight (the next batch encodes while one commits); a log that
    ``CountsDrops`` hears of the records the hand-off dropped before each batch.
    """
    counts = log if isinstance(log, CountsDrops) else None
    noted = 0
    writing: collections.deque[asyncio.Task[None]] = collections.deque()
    try:
        while True:
            events = await handoff.take(batch)
            if counts is not None and handoff.dropped_records > noted:
                counts.note_dropped(handoff.dropped_records - noted)
                noted = handoff.dropped_records
            writing.append(asyncio.create_task(log.write(events)))
            while len(writing) >= depth:
                await writing.popleft()
            if len(events) < batch and linger_s > 0:
                await asyncio.sleep(linger_s)
    finally:  # a write once called happens (SqliteLog sees to it): stop waiting for it
        for task in writing:
            task.cancel()


async def drain(handoff: LogHandoff, log: LocalLog, batch: int = 512) -> int:
    """Hand what is still queued to the log (at shutdown); returns how many events."""
    moved = 0
    while len(handoff):
        events = handoff.take_nowait(batch)
        await log.write(events)
        moved += len(events)
    return moved
