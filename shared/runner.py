"""The one service skeleton: a durable pull consumer that acks by outcome.

A handler receives a decoded message and either returns (ack), raises ``Retry(delay)``
(nak with that delay: the message comes back), or raises ``Reject(reason)`` (term: logged
and never delivered again). A message that does not decode is poison: termed and logged.
While a handler runs, the runner tells JetStream it is still working so a long push is
not redelivered to another member; if the process dies, the message comes back after
``ack_wait``. On stop, the message in hand is finished (up to ``grace_s``) and nothing
new is fetched; a handler cancelled past the grace is neither acked nor naked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from . import bus

log = structlog.get_logger("edgepub.runner")

T = TypeVar("T")


class Retry(Exception):
    """Not now: deliver this message again after ``delay`` seconds."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Reject(Exception):
    """Never: this message cannot be handled; term it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    num_delivered: int
    stream_seq: int


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    batch: int = 8
    grace_s: float = 20.0


class Consumer(Generic[T]):
    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        decoder: Callable[[bytes], T],
        handler: Callable[[T, Delivery], Awaitable[None]],
    ) -> None:
        self._js = js
        self._spec = spec
        self._decode = decoder
        self._handle = handler
        self._log = log.bind(consumer=spec.durable)

    async def ensure(self) -> None:
        spec = self._spec
        filters = list(spec.filter_subjects)
        await self._js.add_consumer(
            spec.stream,
            ConsumerConfig(
                durable_name=spec.durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=spec.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=1000,
                filter_subject=filters[0] if len(filters) == 1 else None,
                filter_subjects=filters if len(filters) > 1 else None,
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle until ``stop`` is set (waiting first for the stream's owner to
        have created it)."""
        if not await bus.wait_for_stream(self._js, self._spec.stream, stop):
            return
        await self.ensure()
        sub = await self._js.pull_subscribe_bind(self._spec.durable, stream=self._spec.stream)
        self._log.info("consumer_started")
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self._spec.batch, timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                for msg in msgs:
                    await self._one(msg, stop)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            self._log.info("consumer_stopped")

    async def _one(self, msg: Msg, stop: asyncio.Event) -> None:
        meta = msg.metadata
        delivery = Delivery(
            subject=msg.subject,
            num_delivered=meta.num_delivered or 1,
            stream_seq=meta.sequence.stream if meta.sequence else 0,
        )
        mlog = self._log.bind(subject=msg.subject, seq=delivery.stream_seq)
        try:
            value = self._decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            mlog.error("message_poison", error=str(exc))
            await msg.term()
            return
        work = asyncio.ensure_future(self._handle(value, delivery))
        beat = asyncio.ensure_future(self._heartbeat(msg))
        try:
            await self._finish_within_grace(work, stop)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        await self._settle(msg, work, mlog)

    async def _finish_within_grace(self, work: asyncio.Future[None], stop: asyncio.Event) -> None:
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # Stopping: give the message in hand a bounded chance to finish.
                await asyncio.wait({work}, timeout=self._spec.grace_s)
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            stopping.cancel()

    async def _settle(self, msg: Msg, work: asyncio.Future[None], mlog: Any) -> None:
        if work.cancelled():
            mlog.info("message_left_for_redelivery")
            return
        exc = work.exception()
        if exc is None:
            await msg.ack()
        elif isinstance(exc, Retry):
            mlog.info("message_retry", reason=exc.reason, delay_s=exc.delay)
            await msg.nak(delay=exc.delay)
        elif isinstance(exc, Reject):
            mlog.error("message_rejected", reason=exc.reason)
            await msg.term()
        else:
            mlog.error("handler_failed", error=repr(exc), exc_info=exc)
            await msg.nak(delay=backoff(msg.metadata.num_delivered or 1))

    async def _heartbeat(self, msg: Msg) -> None:
        every = max(0.5, self._spec.ack_wait_s / 3)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await msg.in_progress()


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff for the n-th attempt (1-based), capped."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


async def run_consumers(consumers: Sequence[Consumer[Any]], stop: asyncio.Event) -> None:
    async with asyncio.TaskGroup() as tg:
        for c in consumers:
            tg.create_task(c.run(stop))
