"""The one service skeleton: a durable pull consumer that acks by outcome.

A handler receives a decoded message and either returns (ack, confirmed by the server),
raises ``Retry(delay)`` (nak with that delay: the message comes back), raises
``Reject(reason)`` (term: logged and never delivered again), or raises anything else (nak
with backoff). A message that does not decode is poison: termed and logged.

Every message ends. The runner, not JetStream, bounds the deliveries (JetStream's own
``max_deliver`` would drop an exhausted message silently, and with it the news that it
failed): a message that failed on its ``max_deliver``-th delivery, or failed once it was
``deadline_s`` old (measured from the message's JetStream timestamp, the server's clock
when the message was stored), is handed to the consumer's dead letter with the last reason
this process saw, then termed. A dead letter that fails is not termed: the message is
naked and the dead letter tried again on its next delivery, so it is never lost. A message
delivered more than ``max_deliver`` times without an outcome (every attempt died with its
process, or was cancelled by a stop) goes to the dead letter at once, without the handler.

The runner holds only what it works on: it fetches at most as many messages as it has free
slots (``concurrency``), runs them at once, and tells JetStream each one is in progress
while it runs, so no held message passes its ack wait and comes back as duplicate work. On
stop nothing new is fetched and every message in hand gets the same ``grace_s`` to finish;
a handler still running then is cancelled, and its message neither acked nor naked (it
comes back after ``ack_wait``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from . import bus
from .server_clock import ServerClock
from .transient import retry_transient

log = structlog.get_logger("edgepub.runner")

T = TypeVar("T")

FETCH_WAIT_S = 1.0  # one pull's wait: how soon a stop is noticed while idle
SETTLE_WAIT_S = 5.0  # a confirmed ack's wait for the server's answer
MIN_DELAY_S = 0.05
_REMEMBERED = 1024  # last failures kept for messages that will come back


class Retry(Exception):
    """Not now: deliver this message again after ``delay`` seconds. Raise it ``from`` the
    error behind it: a dead letter reads the cause."""

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
    stored_at: float = 0.0  # when the server stored the message (its clock), epoch seconds
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # as the publisher set them


@dataclass(frozen=True, kw_only=True)
class GaveUp:
    """Why the runner stops trying a message, for its dead letter."""

    delivery: Delivery
    why: Literal["max_deliver", "deadline"]
    age_s: float  # since the server stored the message
    error: BaseException | None  # the last failure seen here; None: no attempt finished

    @property
    def attempts(self) -> int:
        return self.delivery.num_delivered

    @property
    def reason(self) -> str:
        return failure_text(self.error, self.delivery.num_delivered)


def failure_text(error: BaseException | None, attempts: int) -> str:
    """A failure in words: the handler's own reason, else the exception's type and text."""
    if error is None:
        return (
            f"delivered {attempts} times and no attempt finished (each one stopped with its "
            "process or passed its ack wait)"
        )
    if isinstance(error, Retry | Reject):
        return error.reason
    message = getattr(error, "message", None)
    text = message if isinstance(message, str) else str(error)
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    concurrency: int = 1  # handlers running at once in this process
    batch: int = 8  # most messages one fetch asks for (never more than the free slots)
    max_ack_pending: int = 1000  # across every process on this durable (1: strictly in turn)
    max_deliver: int = 20  # deliveries of one message before its dead letter
    deadline_s: float | None = None  # no retry once a message is this old
    retry_max_s: float = 30.0  # longest backoff after an unexpected error
    grace_s: float = 20.0  # on stop, how long the messages in hand may still run
    confirm_acks: bool = True  # ack_sync: a lost ack would run the handler again

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.batch < 1 or self.max_deliver < 1:
            raise ValueError(f"{self.durable}: concurrency, batch and max_deliver must be >= 1")
        if self.max_ack_pending < 1:
            raise ValueError(f"{self.durable}: max_ack_pending must be >= 1")


Handler = Callable[[T, Delivery], Awaitable[None]]
DeadLetter = Callable[[T, GaveUp], Awaitable[None]]


class Consumer(Generic[T]):
    """``dead_letter`` turns an exhausted message into the failure it means (a failed
    publish, say) and must raise if it could not; without one, exhausted messages are
    logged and termed."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        decoder: Callable[[bytes], T],
        handler: Handler[T],
        dead_letter: DeadLetter[T] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._spec = spec
        self._decode = decoder
        self._handle = handler
        self._dead_letter = dead_letter
        # ages are the server's: its stamp on the message against its time now
        self._server = ServerClock(getattr(js, "_nc", None), spec.stream, local=clock)
        self._clock = self._server.now
        self._log = log.bind(consumer=spec.durable)
        self._busy = 0
        self._freed = asyncio.Event()
        self._last: dict[int, BaseException] = {}  # stream seq -> last failure

    def now(self) -> float:
        """The server's time now (epoch seconds), as message timestamps are."""
        return self._clock()

    def consumer_config(self) -> ConsumerConfig:
        spec = self._spec
        filters = list(spec.filter_subjects)
        return ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=spec.ack_wait_s,
            # Unbounded on the server: the runner ends each message itself (see above).
            max_deliver=-1,
            max_ack_pending=spec.max_ack_pending,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )

    async def ensure(self) -> None:
        await self._js.add_consumer(self._spec.stream, self.consumer_config())

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle until ``stop`` is set (waiting first for the stream's owner to
        have created it); returns once every message in hand is settled or cancelled."""
        if not await bus.wait_for_stream(self._js, self._spec.stream, stop):
            return
        what = f"consumer {self._spec.durable}"
        await retry_transient(self.ensure, what=what)
        sub = await retry_transient(
            lambda: self._js.pull_subscribe_bind(self._spec.durable, stream=self._spec.stream),
            what=what,
        )
        spec = self._spec
        self._log.info(
            "consumer_started",
            concurrency=spec.concurrency,
            max_deliver=spec.max_deliver,
            deadline_s=spec.deadline_s,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                await self._pull(sub, stop, tg)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            self._log.info("consumer_stopped")

    async def _pull(self, sub: Any, stop: asyncio.Event, tg: asyncio.TaskGroup) -> None:
        while not stop.is_set():
            await self._server.refresh()
            free = self._spec.concurrency - self._busy
            if free <= 0:
                await self._wait_for_slot()
                continue
            try:
                msgs = await sub.fetch(min(self._spec.batch, free), timeout=FETCH_WAIT_S)
            except TimeoutError:  # nats' own TimeoutError derives from it
                continue
            except APIError as exc:  # a leader change, say: try again shortly
                self._log.warning("fetch_failed", error=repr(exc))
                await _wait(stop, FETCH_WAIT_S)
                continue
            for msg in msgs:
                self._busy += 1
                tg.create_task(self._one(msg, stop))

    async def _wait_for_slot(self) -> None:
        """Until a handler ends (or a moment passes, so a stop is noticed)."""
        self._freed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FETCH_WAIT_S):
                await self._freed.wait()

    # --- one message ------------------------------------------------------------------

    async def _one(self, msg: Msg, stop: asyncio.Event) -> None:
        try:
            delivery = self._delivery(msg)
            mlog = self._log.bind(
                subject=msg.subject, seq=delivery.stream_seq, attempt=delivery.num_delivered
            )
            async with asyncio.TaskGroup() as tg:
                beat = tg.create_task(self._heartbeat(msg))
                try:
                    await self._process(msg, delivery, stop, mlog)
                finally:
                    beat.cancel()
        finally:
            self._busy -= 1
            self._freed.set()

    def _delivery(self, msg: Msg) -> Delivery:
        meta = msg.metadata
        return Delivery(
            subject=msg.subject,
            num_delivered=meta.num_delivered or 1,
            stream_seq=meta.sequence.stream if meta.sequence else 0,
            stored_at=meta.timestamp.timestamp() if meta.timestamp else self._clock(),
            headers=dict(msg.headers or {}),
        )

    async def _process(self, msg: Msg, delivery: Delivery, stop: asyncio.Event, mlog: Any) -> None:
        try:
            value = self._decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            mlog.error("message_poison", error=str(exc))
            await self._reply(msg, "term", mlog)
            return
        if delivery.num_delivered > self._spec.max_deliver:
            last = self._last.get(delivery.stream_seq)
            await self._give_up(msg, value, delivery, "max_deliver", last, mlog)
            return
        work = await self._attempt(value, delivery, stop)
        if work.cancelled():
            mlog.info("message_left_for_redelivery")
            return
        error = work.result()
        if error is None:
            self._last.pop(delivery.stream_seq, None)
            await self._reply(msg, "ack", mlog)
        elif isinstance(error, Reject):
            self._last.pop(delivery.stream_seq, None)
            mlog.error("message_rejected", reason=error.reason)
            await self._reply(msg, "term", mlog)
        else:
            await self._failed(msg, value, delivery, error, mlog)

    async def _attempt(
        self, value: T, delivery: Delivery, stop: asyncio.Event
    ) -> asyncio.Task[Exception | None]:
        """Run the handler; on stop, give it ``grace_s`` more, then cancel it."""
        async with asyncio.TaskGroup() as tg:
            work = tg.create_task(self._call(value, delivery))
            stopping = tg.create_task(stop.wait())
            try:
                await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    await asyncio.wait({work}, timeout=self._spec.grace_s)
                    work.cancel()  # no-op if it finished
            finally:
                stopping.cancel()
        return work

    async def _call(self, value: T, delivery: Delivery) -> Exception | None:
        """The handler's outcome as a value: None, or what it raised (cancellation passes)."""
        try:
            await self._handle(value, delivery)
        except Exception as exc:
            return exc
        return None

    async def _failed(
        self, msg: Msg, value: T, delivery: Delivery, error: Exception, mlog: Any
    ) -> None:
        self._remember(delivery.stream_seq, error)
        age = self._age(delivery)
        spec = self._spec
        if delivery.num_delivered >= spec.max_deliver:
            await self._give_up(msg, value, delivery, "max_deliver", error, mlog)
            return
        if spec.deadline_s is not None and age >= spec.deadline_s:
            await self._give_up(msg, value, delivery, "deadline", error, mlog)
            return
        delay = next_delay(error, delivery.num_delivered, age, spec)
        if isinstance(error, Retry):
            mlog.info("message_retry", reason=error.reason, delay_s=round(delay, 3))
        else:
            mlog.error("handler_failed", error=repr(error), delay_s=round(delay, 3), exc_info=error)
        await self._reply(msg, "nak", mlog, delay=delay)

    async def _give_up(
        self,
        msg: Msg,
        value: T,
        delivery: Delivery,
        why: Literal["max_deliver", "deadline"],
        error: BaseException | None,
        mlog: Any,
    ) -> None:
        gave_up = GaveUp(delivery=delivery, why=why, age_s=self._age(delivery), error=error)
        mlog.error("message_dead", why=why, age_s=round(gave_up.age_s, 1), reason=gave_up.reason)
        if self._dead_letter is not None:
            try:
                await self._dead_letter(value, gave_up)
            except Exception as exc:
                # Not termed: it comes back, and the dead letter is tried again.
                delay = backoff(delivery.num_delivered, cap=self._spec.retry_max_s)
                mlog.error("dead_letter_failed", error=repr(exc), delay_s=delay, exc_info=exc)
                await self._reply(msg, "nak", mlog, delay=delay)
                return
        self._last.pop(delivery.stream_seq, None)
        await self._reply(msg, "term", mlog)

    def _remember(self, seq: int, error: BaseException) -> None:
        self._last.pop(seq, None)
        self._last[seq] = error
        while len(self._last) > _REMEMBERED:
            del self._last[next(iter(self._last))]

    def _age(self, delivery: Delivery) -> float:
        return max(0.0, self._clock() - delivery.stored_at)

    async def _reply(
        self, msg: Msg, verb: Literal["ack", "nak", "term"], mlog: Any, *, delay: float = 0.0
    ) -> None:
        """Settle with the server. If the answer is lost, the message comes back after its
        ack wait, and handlers are idempotent."""
        try:
            if verb == "ack" and self._spec.confirm_acks:
                await msg.ack_sync(timeout=SETTLE_WAIT_S)
            elif verb == "ack":
                await msg.ack()
            elif verb == "nak":
                await msg.nak(delay=delay)
            else:
                await msg.term()
        except (nats.errors.Error, TimeoutError) as exc:
            mlog.warning("settle_failed", verb=verb, error=repr(exc))

    async def _heartbeat(self, msg: Msg) -> None:
        every = max(0.5, self._spec.ack_wait_s / 3)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()


def next_delay(error: BaseException, attempt: int, age_s: float, spec: ConsumerSpec) -> float:
    """The handler's delay (``Retry``) or backoff, never past the deadline: the last try
    lands on it (pure)."""
    delay = error.delay if isinstance(error, Retry) else backoff(attempt, cap=spec.retry_max_s)
    if spec.deadline_s is not None:
        delay = min(delay, spec.deadline_s - age_s)
    return max(MIN_DELAY_S, delay)


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff for the n-th attempt (1-based), capped."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def run_consumers(consumers: Sequence[Consumer[Any]], stop: asyncio.Event) -> None:
    async with asyncio.TaskGroup() as tg:
        for c in consumers:
            tg.create_task(c.run(stop))
