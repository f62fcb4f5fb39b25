"""What the dashboard shows, as the services publish it: the edges bucket (``edge.<name>``
records and ``seen.<name>`` heartbeats, written by the token service) and the publishes
bucket (the publish service's records), followed live with KV watches.

The dashboard owns no state: these dicts are a cache of the buckets, rebuilt from them on
every (re)start and on every watch that had to start over. ``changed`` wakes whoever
renders; ``fresh_at`` says when the feed last heard from the server, so a page can say
when what it shows is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext

from edgepub.shared import subjects
from edgepub.shared.edge_messages import EdgeRecord, EdgeSeen
from edgepub.shared.schemas import PublishRecord, decoder
from edgepub.shared.transient import backoff

log = structlog.get_logger("edgepub.dashboard")

IDLE_S = 5.0  # a watch with nothing new for this long checks the connection is alive

# records are msgpack, as every writer stores them (``schemas.encode``, ``kv_table``)
_record = decoder(EdgeRecord)
_seen = decoder(EdgeSeen)
_publish = decoder(PublishRecord)


class FleetSource:
    def __init__(self, js: JetStreamContext, *, is_connected: Callable[[], bool]) -> None:
        self._js = js
        self._is_connected = is_connected
        self.records: dict[str, EdgeRecord] = {}
        self.seen: dict[str, EdgeSeen] = {}
        self.publishes: dict[int, PublishRecord] = {}
        self.version = 0  # moves on every change
        self.fresh_at = 0.0  # monotonic: the last time a watch heard from the server
        self.ready = asyncio.Event()  # both buckets read once
        self._changed = asyncio.Condition()
        self._loaded: set[str] = set()

    @property
    def live(self) -> bool:
        return self.is_connected and self.ready.is_set()

    @property
    def is_connected(self) -> bool:
        return self._is_connected()

    async def changed(self, since: int, timeout: float) -> int:  # noqa: ASYNC109
        """Until ``version`` moves past ``since`` (or ``timeout``); the version then."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version != since), timeout
                )
            return self.version

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._follow(subjects.KV_EDGES, self._on_edge, stop)),
            asyncio.create_task(self._follow(subjects.KV_PUBLISHES, self._on_publish, stop)),
        ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _bump(self) -> None:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    def _on_edge(self, key: str, value: bytes | None) -> None:
        kind, _, name = key.partition(".")
        try:
            if kind == "edge":
                if value is None:
                    self.records.pop(name, None)
                else:
                    self.records[name] = _record.decode(value)
            elif kind == "seen":
                if value is None:
                    self.seen.pop(name, None)
                else:
                    self.seen[name] = _seen.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("record_unreadable", bucket=subjects.KV_EDGES, key=key, error=str(exc))

    def _on_publish(self, key: str, value: bytes | None) -> None:
        if not key.isdigit():
            return
        if value is None:
            self.publishes.pop(int(key), None)
            return
        try:
            self.publishes[int(key)] = _publish.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("record_unreadable", bucket=subjects.KV_PUBLISHES, key=key, error=str(exc))

    async def _follow(
        self, bucket: str, apply: Callable[[str, bytes | None], None], stop: asyncio.Event
    ) -> None:
        """Watch ``bucket`` for good: every key's latest value, then each change. A watch
        that fails (the broker away, a leader moving) starts over after a backoff, and the
        cache is rebuilt from what it reads again."""
        attempt = 0
        while not stop.is_set():
            try:
                kv = await self._js.key_value(bucket)
                watcher: Any = await kv.watch(">")
                try:
                    await self._drain(bucket, watcher, apply, stop)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
                attempt = 0
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                attempt += 1
                log.info("watch_restarting", bucket=bucket, error=repr(exc)[:200])
                await asyncio.sleep(backoff(attempt, 5.0))

    async def _drain(
        self,
        bucket: str,
        watcher: Any,
        apply: Callable[[str, bytes | None], None],
        stop: asyncio.Event,
    ) -> None:
        initial: dict[str, bytes | None] = {}
        loading = True
        while not stop.is_set():
            try:
                entry = await watcher.updates(timeout=IDLE_S)
            except nats.errors.TimeoutError:
                if loading:  # nats-py gave no end-of-initial marker: take what came
                    entry = None
                elif not self.is_connected:
                    raise nats.errors.ConnectionClosedError from None
                else:
                    self.fresh_at = time.monotonic()
                    continue
            self.fresh_at = time.monotonic()
            if entry is None:
                if loading:  # the whole bucket as it is now: replace the cache at once
                    loading = False
                    self._replace(bucket, initial, apply)
                    self._loaded.add(bucket)
                    if self._loaded >= {subjects.KV_EDGES, subjects.KV_PUBLISHES}:
                        self.ready.set()
                    await self._bump()
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            value = None if deleted else entry.value
            if loading:
                initial[entry.key] = value
            else:
                apply(entry.key, value)
                await self._bump()

    def _replace(
        self,
        bucket: str,
        initial: dict[str, bytes | None],
        apply: Callable[[str, bytes | None], None],
    ) -> None:
        if bucket == subjects.KV_EDGES:
            self.records, self.seen = {}, {}
        else:
            self.publishes = {}
        for key, value in initial.items():
            if value is not None:
                apply(key, value)
