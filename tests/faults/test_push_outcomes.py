"""The publish service's outcomes consumer against a real nats-server: an outcome it
cannot record is not dropped and does not leave the publish Publishing. Its dead letter
tries once more, then records Error with the reason; a failure even there keeps the
message."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest

from edgepub.services.publish.__main__ import outcomes_spec
from edgepub.services.publish.handlers import PublishService
from edgepub.services.publish.state import State
from edgepub.shared import bus, schemas, subjects
from edgepub.shared.runner import Consumer, Delivery
from edgepub.shared.schemas import HelmInfo, PublishRecord, Pushed, PushOutcome
from edgepub.shared.settings import Env
from support.servers import NatsServer
from support.waiting import async_wait_for

pytestmark = pytest.mark.timeout(120)

PUSHED = Pushed(
    publish_id=7,
    pipeline_url="127.0.0.1:5000/edgepub/pipelines/p:v",
    pipeline_digest="sha256:" + "a" * 64,
    engine_url="edgepub-edge:0.1.0",
    helm=HelmInfo(reference="r/charts@sha256:b", chart="oci://r/charts/p", version="0.0.1-v"),
    chart_digest="sha256:" + "b" * 64,
)


class CannotRecordPushed(PublishService):
    """A publish service with a bug in recording ``Pushed`` (every other outcome works)."""

    async def on_outcome(self, outcome: PushOutcome, delivery: Delivery) -> None:
        if isinstance(outcome, Pushed):
            raise TypeError("helm values are not a mapping")
        await super().on_outcome(outcome, delivery)


def test_an_outcome_it_cannot_record_ends_the_publish_in_error(nats_server: NatsServer) -> None:
    async def main() -> None:
        publish = await bus.connect(nats_server.settings("publish"), name="publish")
        push = await bus.connect(nats_server.settings("registry-push"), name="push")
        try:
            js = publish.jetstream()
            await bus.ensure_all(js)
            state = await State.open(js)
            now = datetime.now(UTC)
            await state.publishes.create(
                "7",
                PublishRecord(
                    id=7,
                    pipeline_name="p",
                    pipeline_version_id=1,
                    pipeline_version_name="v",
                    status="Publishing",
                    created_at=now,
                    updated_at=now,
                ),
            )
            spec = msgspec.structs.replace(outcomes_spec(Env({})), max_deliver=2, retry_max_s=0.1)
            svc = CannotRecordPushed(js=js, state=state)
            consumer = Consumer(
                js, spec, schemas.push_outcome_decoder.decode, svc.on_outcome, svc.on_dead_outcome
            )
            await push.jetstream().publish(subjects.PUBLISH_PUSHED, schemas.encode(PUSHED))
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(consumer.run(stop))

                async def ended() -> bool:
                    got = await state.publishes.get("7")
                    return got is not None and got[0].status == "Error"

                await async_wait_for(ended, 30, "the publish to end Error")
                stop.set()
                async with asyncio.timeout(30):
                    await task
            got = await state.publishes.get("7")
            assert got is not None
            record = got[0]
            assert record.status == "Error" and record.error
            assert record.error.startswith(
                f"the registry holds {PUSHED.pipeline_url}, but the publish service could not "
                "record it: TypeError: helm values are not a mapping"
            )
            assert record.error.endswith("[internal]")
        finally:
            await push.close()
            await publish.close()

    asyncio.run(main())
