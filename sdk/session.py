"""The SDK's async side: one NATS connection, typed requests with retries, model bytes
into the object store, and watching a publish's events until it settles."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.errors import ObjectNotFoundError

from edgepub.shared import bus, rpc, subjects
from edgepub.shared.errors import ServiceUnavailableError
from edgepub.shared.schemas import (
    TERMINAL_STATUSES,
    PublishGetRequest,
    PublishRecord,
    decoder,
)
from edgepub.shared.settings import NatsSettings

Resp = TypeVar("Resp")
SILENCE_CHECK_S = 15  # seconds without an event before the record is read directly


class Session:
    def __init__(self, settings: NatsSettings, request_timeout: float) -> None:
        self.settings = settings
        self.user = settings.user or "anonymous"
        self.request_timeout = request_timeout
        self._nc: NATS | None = None

    async def nc(self) -> NATS:
        if self._nc is None or self._nc.is_closed:
            self._nc = await bus.connect(self.settings, name=f"edgepub-sdk:{self.user}")
        return self._nc

    async def call(
        self,
        verb: str,
        request: msgspec.Struct,
        response_type: type[Resp],
        *,
        retry_for: float = 15.0,
    ) -> Resp:
        """Send a request, re-sending the SAME request while no service answers (a service
        restarting, a stack just started). Safe because every request is idempotent: reads,
        creates keyed by name or content, and publishes keyed by their request id."""
        nc = await self.nc()
        subject = subjects.request(self.user, verb)
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return await rpc.call(
                    nc, subject, request, response_type, timeout=self.request_timeout
                )
            except ServiceUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    async def put_model_bytes(self, path: Path, sha256: str) -> None:
        nc = await self.nc()
        store = await bus.ensure_object_store(nc.jetstream())
        try:
            info = await store.get_info(sha256)
            if not info.deleted:
                return  # content-addressed: these bytes are already there
        except (ObjectNotFoundError, JsNotFoundError):
            pass  # not uploaded yet
        with path.open("rb") as f:
            await store.put(sha256, f)

    async def watch_publish(
        self,
        publish_id: int,
        timeout: float,  # noqa: ASYNC109 - the whole watch is one asyncio.timeout scope
        on_update: Callable[[PublishRecord], None],
        on_tick: Callable[[], None],
    ) -> PublishRecord:
        """Follow the publish's events (its whole history first) until a terminal status.
        A subscription lost to a broker restart is made again; after a long silence the
        record is read once directly, in case the events stopped reaching us."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    return await self._follow(publish_id, on_update, on_tick)
                except (nats.errors.Error, TimeoutError):
                    on_tick()  # the broker is restarting: subscribe again
                    await asyncio.sleep(0.5)

    async def _follow(
        self,
        publish_id: int,
        on_update: Callable[[PublishRecord], None],
        on_tick: Callable[[], None],
    ) -> PublishRecord:
        js = (await self.nc()).jetstream()
        sub = await js.subscribe(
            subjects.publish_events(publish_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        dec = decoder(PublishRecord)
        quiet = 0
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    on_tick()
                    quiet += 1
                    if quiet % SILENCE_CHECK_S == 0:
                        record = await self.call(
                            subjects.VERB_PUBLISH_GET,
                            PublishGetRequest(id=publish_id),
                            PublishRecord,
                        )
                        if record.status in TERMINAL_STATUSES:
                            on_update(record)
                            return record
                    continue
                quiet = 0
                record = dec.decode(msg.data)
                on_update(record)
                if record.status in TERMINAL_STATUSES:
                    return record
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()
