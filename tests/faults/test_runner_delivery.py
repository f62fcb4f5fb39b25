"""The runner (shared/runner.py) against a real nats-server, as the registry-push user with
its real permissions: every message ends (bounded deliveries, a deadline, a dead letter
that is never lost), the runner holds only what it works on and keeps each held message
alive, and a stop gives every message in hand one grace."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerInfo

from edgepub.shared import bus, subjects
from edgepub.shared.runner import Consumer, ConsumerSpec, Delivery, GaveUp
from support.servers import NatsServer
from support.waiting import async_wait_for

pytestmark = pytest.mark.timeout(120)

ACK_WAIT_S = 1.0


def spec(**overrides: Any) -> ConsumerSpec:
    values: dict[str, Any] = {
        "stream": subjects.WORK_STREAM,
        "durable": subjects.CONSUMER_REGISTRY_PUSH,
        "filter_subjects": (subjects.PUBLISH_REQUESTED,),
        "ack_wait_s": ACK_WAIT_S,
        "retry_max_s": 0.1,
        "grace_s": 0.2,
    }
    values.update(overrides)
    return ConsumerSpec(**values)


@dataclass
class Seen:
    """What the handler and the dead letter were given, in order."""

    events: list[tuple[str, bytes, int]] = field(default_factory=list)
    gave_up: list[tuple[bytes, GaveUp]] = field(default_factory=list)

    def calls(self, kind: str, data: bytes | None = None) -> list[int]:
        return [n for k, d, n in self.events if k == kind and (data is None or d == data)]


@dataclass
class Bench:
    owner: NATS  # the publish service's user: it owns the stream and sends the work
    worker: NATS  # registry-push's user: it runs the consumer

    async def send(self, *payloads: bytes) -> None:
        js = self.owner.jetstream()
        for data in payloads:
            await js.publish(subjects.PUBLISH_REQUESTED, data)

    async def info(self) -> ConsumerInfo:
        js = self.worker.jetstream()
        return await js.consumer_info(subjects.WORK_STREAM, subjects.CONSUMER_REGISTRY_PUSH)

    @contextlib.asynccontextmanager
    async def running(
        self,
        the_spec: ConsumerSpec,
        handler: Callable[[bytes, Delivery], Awaitable[None]],
        dead_letter: Callable[[bytes, GaveUp], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AsyncIterator[asyncio.Event]:
        """The consumer, running until the block ends (then stopped, and waited for)."""
        stop = asyncio.Event()
        consumer = Consumer(
            self.worker.jetstream(), the_spec, bytes, handler, dead_letter, clock=clock
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(consumer.run(stop))
            try:
                yield stop
            finally:
                stop.set()
                async with asyncio.timeout(30):
                    await task


def on_bench(nats_server: NatsServer, scenario: Callable[[Bench], Awaitable[None]]) -> None:
    async def main() -> None:
        owner = await bus.connect(nats_server.settings("publish"), name="owner")
        worker = await bus.connect(nats_server.settings("registry-push"), name="worker")
        try:
            await bus.ensure_streams(owner.jetstream())
            async with asyncio.timeout(90):
                await scenario(Bench(owner=owner, worker=worker))
        finally:
            await worker.close()
            await owner.close()

    asyncio.run(main())


async def settled(bench: Bench, messages: int) -> ConsumerInfo:
    """Once every message is acked or termed (the ack floor has passed them all)."""

    async def done() -> ConsumerInfo | None:
        info = await bench.info()
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        return info if floor >= messages and not info.num_ack_pending else None

    return await async_wait_for(done, 20, "every message settled")


# --- every message ends -------------------------------------------------------------------


def test_a_handler_raising_a_non_edgepub_error_ends_in_its_dead_letter(
    nats_server: NatsServer,
) -> None:
    async def scenario(bench: Bench) -> None:
        seen = Seen()

        async def handler(data: bytes, d: Delivery) -> None:
            seen.events.append(("handle", data, d.num_delivered))
            raise ValueError(f"chart value {d.num_delivered} is not a string")

        async def dead_letter(data: bytes, gave_up: GaveUp) -> None:
            seen.gave_up.append((data, gave_up))

        await bench.send(b"one")
        async with bench.running(spec(max_deliver=3), handler, dead_letter):
            await async_wait_for(lambda: seen.gave_up, 20, "the dead letter")
            await settled(bench, 1)
        assert seen.calls("handle") == [1, 2, 3]
        [(data, gave_up)] = seen.gave_up
        assert data == b"one"
        assert (gave_up.why, gave_up.attempts) == ("max_deliver", 3)
        assert isinstance(gave_up.error, ValueError)
        assert gave_up.reason == "ValueError: chart value 3 is not a string"
        assert gave_up.delivery.stored_at > 0

    on_bench(nats_server, scenario)


# skewed: the service's clock two hours off the broker's; the deadline still falls 1 s
# after the server stored the message (ahead, it would end at the first failure; behind,
# never)
@pytest.mark.parametrize("skew_s", [0.0, 7200.0, -7200.0], ids=["same", "ahead", "behind"])
def test_the_deadline_ends_every_kind_of_failure_by_the_brokers_clock(
    nats_server: NatsServer, skew_s: float
) -> None:
    """Not only a registry outage: a full disk too, however many deliveries are left."""

    async def scenario(bench: Bench) -> None:
        seen = Seen()

        async def handler(data: bytes, d: Delivery) -> None:
            seen.events.append(("handle", data, d.num_delivered))
            raise OSError(28, "No space left on device")

        async def dead_letter(data: bytes, gave_up: GaveUp) -> None:
            seen.gave_up.append((data, gave_up))

        await bench.send(b"disk")
        the_spec = spec(max_deliver=1000, deadline_s=1.0)
        skewed = lambda: time.time() + skew_s  # noqa: E731
        async with bench.running(the_spec, handler, dead_letter, clock=skewed):
            await async_wait_for(lambda: seen.gave_up, 20, "the dead letter")
            await settled(bench, 1)
        [(_, gave_up)] = seen.gave_up
        assert gave_up.why == "deadline"
        assert gave_up.age_s >= 1.0
        assert gave_up.age_s < 10.0 or not skew_s, gave_up.age_s
        assert 2 <= gave_up.attempts < 1000
        assert seen.calls("handle") == list(range(1, gave_up.attempts + 1))
        assert gave_up.reason == "OSError: [Errno 28] No space left on device"

    on_bench(nats_server, scenario)


def test_a_dead_letter_that_fails_keeps_the_message_until_it_is_stored(
    nats_server: NatsServer,
) -> None:
    async def scenario(bench: Bench) -> None:
        seen = Seen()

        async def handler(data: bytes, d: Delivery) -> None:
            seen.events.append(("handle", data, d.num_delivered))
            raise KeyError("engine")

        async def dead_letter(data: bytes, gave_up: GaveUp) -> None:
            seen.gave_up.append((data, gave_up))
            if len(seen.gave_up) == 1:
                raise ConnectionError("the outcome could not be published")

        await bench.send(b"m")
        async with bench.running(spec(max_deliver=2), handler, dead_letter):
            await async_wait_for(lambda: len(seen.gave_up) == 2, 20, "a second dead letter")
            await settled(bench, 1)
        assert seen.calls("handle") == [1, 2]  # the third delivery went to the dead letter
        assert [g.attempts for _, g in seen.gave_up] == [2, 3]
        assert [g.reason for _, g in seen.gave_up] == ["KeyError: 'engine'"] * 2

    on_bench(nats_server, scenario)


def test_a_message_whose_attempts_never_finish_goes_to_its_dead_letter(
    nats_server: NatsServer,
) -> None:
    """Each attempt stopped with its process: past max_deliver the handler is not called
    again; the dead letter says no attempt finished."""

    async def scenario(bench: Bench) -> None:
        seen = Seen()

        async def hang(data: bytes, d: Delivery) -> None:
            seen.events.append(("handle", data, d.num_delivered))
            await asyncio.Event().wait()

        async def dead_letter(data: bytes, gave_up: GaveUp) -> None:
            seen.gave_up.append((data, gave_up))

        await bench.send(b"crash")
        async with bench.running(spec(max_deliver=1, grace_s=0.0), hang, dead_letter):
            await async_wait_for(lambda: seen.calls("handle"), 20, "the first attempt")
        async with bench.running(spec(max_deliver=1), hang, dead_letter):  # a new process
            await async_wait_for(lambda: seen.gave_up, 20, "the dead letter")
            await settled(bench, 1)
        assert seen.calls("handle") == [1]
        [(_, gave_up)] = seen.gave_up
        assert (gave_up.why, gave_up.attempts, gave_up.error) == ("max_deliver", 2, None)
        assert gave_up.reason.startswith("delivered 2 times and no attempt finished")

    on_bench(nats_server, scenario)


def test_poison_is_termed_without_the_handler_or_the_dead_letter(nats_server: NatsServer) -> None:
    async def scenario(bench: Bench) -> None:
        called: list[str] = []

        def decode(data: bytes) -> bytes:
            raise msgspec.DecodeError("not msgpack")

        async def handler(data: bytes, d: Delivery) -> None:
            called.append("handle")

        async def dead_letter(data: bytes, gave_up: GaveUp) -> None:
            called.append("dead")

        await bench.send(b"\xff")
        stop = asyncio.Event()
        consumer = Consumer(bench.worker.jetstream(), spec(), decode, handler, dead_letter)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(consumer.run(stop))
            await settled(bench, 1)
            stop.set()
            async with asyncio.timeout(30):
                await task
        assert called == []

    on_bench(nats_server, scenario)


# --- the runner holds only what it works on ----------------------------------------------


def test_only_what_is_in_hand_is_fetched_and_every_held_message_is_kept_alive(
    nats_server: NatsServer,
) -> None:
    """Two at once, three queued, each handler held for several ack waits: two are
    delivered (and kept alive: never redelivered), the third stays in the stream until a
    slot frees; each runs once."""

    async def scenario(bench: Bench) -> None:
        seen = Seen()
        release = asyncio.Event()

        async def slow(data: bytes, d: Delivery) -> None:
            seen.events.append(("handle", data, d.num_delivered))
            async with asyncio.timeout(60):
                await release.wait()

        await bench.send(b"a", b"b", b"c")
        async with bench.running(spec(concurrency=2, batch=8), slow):
            await async_wait_for(lambda: len(seen.calls("handle")) == 2, 20, "two in hand")
            held_until = time.monotonic() + 4 * ACK_WAIT_S
            while time.monotonic() < held_until:  # the property is time passing: check it
                info = await bench.info()
                assert info.num_ack_pending == 2, info
                assert info.num_redelivered == 0, info
                assert info.num_pending == 1, info  # the third waits in the stream
                await asyncio.sleep(0.2)
            release.set()
            await settled(bench, 3)
        assert sorted(d for _, d, _ in seen.events) == [b"a", b"b", b"c"]
        assert seen.calls("handle") == [1, 1, 1]

    on_bench(nats_server, scenario)


def test_a_stop_gives_every_message_in_hand_one_grace(nats_server: NatsServer) -> None:
    """Three in hand at once when the stop comes: all three are cancelled after the same
    grace (not one after another), none is acked or naked, and they come back."""

    async def scenario(bench: Bench) -> None:
        seen = Seen()

        async def endless(data: bytes, d: Delivery) -> None:
            seen.events.append(("handle", data, d.num_delivered))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.events.append(("cancelled", data, d.num_delivered))
                raise

        await bench.send(b"a", b"b", b"c")
        async with bench.running(spec(concurrency=3, ack_wait_s=30.0, grace_s=0.3), endless):
            await async_wait_for(lambda: len(seen.calls("handle")) == 3, 20, "three in hand")
        kinds = [k for k, _, _ in seen.events]
        assert kinds == ["handle"] * 3 + ["cancelled"] * 3
        info = await bench.info()
        assert info.num_ack_pending == 3 and info.num_redelivered == 0  # left as they were

    on_bench(nats_server, scenario)
