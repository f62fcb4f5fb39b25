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
import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy

from edgepub.shared import bus, objects, rpc, subjects
from edgepub.shared.errors import ServiceUnavailableError
from edgepub.shared.schemas import (
    TERMINAL_STATUSES,
    ModelUploadReply,
    ModelUploadRequest,
    PublishGetRequest,
    PublishRecord,
    decoder,
)
from edgepub.shared.settings import NatsSettings

ATTEMPT_S = 10.0  # an answer this late: the request is sent again
log = structlog.get_logger("edgepub.sdk")

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
        restarting, a stack just started) and when an answer is ``ATTEMPT_S`` late (the
        request or its answer died with a cluster node). Safe because every request is
        idempotent: reads, creates keyed by name or content, and publishes keyed by their
        request id. Gives up after ``request_timeout`` (at least ``retry_for``)."""
        nc = await self.nc()
        subject = subjects.request(self.user, verb)
        deadline = time.monotonic() + max(retry_for, self.request_timeout)
        while True:
            wait = min(self.request_timeout, ATTEMPT_S, max(deadline - time.monotonic(), 0.1))
            try:
                return await rpc.call(nc, subject, request, response_type, timeout=wait)
            except ServiceUnavailableError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.debug("request_unanswered", verb=verb, error=exc.message)
                await asyncio.sleep(0.5)

    async def put_model_bytes(self, path: Path, sha256: str, size: int) -> None:
        """Make sure the publish service holds exactly these bytes: ask first (the same
        bytes are never sent twice), else write them to the upload area and have the
        service verify and take them (see services/publish/uploads.py)."""
        ask = ModelUploadRequest(sha256=sha256, size=size)
        if (await self.call(subjects.VERB_MODEL_UPLOAD, ask, ModelUploadReply)).present:
            return
        js = (await self.nc()).jetstream()
        name = objects.upload_name(sha256)
        chunks = objects.file_chunks(str(path))
        await objects.write(js, subjects.OBJECT_STORE_UPLOADS, name, objects.new_nuid(), chunks)
        take = ModelUploadRequest(sha256=sha256, size=size, upload=name)
        await self.call(subjects.VERB_MODEL_UPLOAD, take, ModelUploadReply)

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
            stream=subjects.EVENTS_STREAM,  # named: looking it up is an API call users lack
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
