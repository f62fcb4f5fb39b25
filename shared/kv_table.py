"""A JetStream KV bucket as a table of typed records with optimistic concurrency.

Every write states the revision it read (``update(..., revision=rev)``) or that the key must
not exist (``create``); a lost race surfaces as ``Conflict`` and the caller re-reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import msgspec
import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from .schemas import decoder, encode

R = TypeVar("R", bound=msgspec.Struct)
LATE_ENTRIES_S = 0.25  # see scan_items


class Conflict(Exception):
    """Someone else wrote the key between our read and our write."""


class Table(Generic[R]):
    """One KV bucket holding records of one type."""

    def __init__(self, kv: KeyValue, kind: type[R]) -> None:
        self._kv = kv
        self._dec = decoder(kind)

    async def get(self, key: str) -> tuple[R, int] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:  # also covers deleted keys
            return None
        if entry.value is None:
            return None
        return self._dec.decode(entry.value), entry.revision or 0

    async def create(self, key: str, record: R) -> int:
        try:
            return await self._kv.create(key, encode(record))
        except KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def update(self, key: str, record: R, revision: int) -> int:
        try:
            return await self._kv.update(key, encode(record), last=revision)
        except KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def put(self, key: str, record: R) -> int:
        """Write whatever was there (a report that only its writer makes)."""
        return await self._kv.put(key, encode(record))

    async def scan(self, key_filter: str = ">") -> AsyncIterator[R]:
        async for _, record in self.scan_items(key_filter):
            yield record

    async def scan_items(self, key_filter: str = ">") -> AsyncIterator[tuple[str, R]]:
        """(key, record) for every live key matching ``key_filter``, now."""
        watcher = await self._kv.watch(key_filter, ignore_deletes=True)
        try:
            seen = 0
            async for entry in watcher:
                if entry is None:  # end of the initial values
                    break
                seen += 1
                if entry.value:
                    yield entry.key, self._dec.decode(entry.value)
            if seen == 0:
                # nats-py says "no initial values" when the server had already sent them
                # all but none was read yet (consumer info: nothing pending, nothing
                # received): what is on its way still arrives, moments later
                while True:
                    try:
                        late = await watcher.updates(timeout=LATE_ENTRIES_S)  # type: ignore[no-untyped-call]
                    except (TimeoutError, nats.errors.TimeoutError):
                        break
                    if late is None:
                        break
                    if late.value:
                        yield late.key, self._dec.decode(late.value)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
