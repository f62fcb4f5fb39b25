"""The publish service: answers SDK/CLI requests and follows pushes to a final state.

Run: ``python -m edgepub.services.publish`` (env: EDGEPUB_NATS_URL/USER/PASSWORD).
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from edgepub.shared import bus, rpc, service, subjects
from edgepub.shared.runner import Consumer, ConsumerSpec
from edgepub.shared.schemas import (
    ModelGetRequest,
    ModelRegisterRequest,
    ModelUploadRequest,
    PipelineBuildRequest,
    PublishCreateRequest,
    PublishGetRequest,
    PublishListRequest,
    push_outcome_decoder,
)
from edgepub.shared.settings import Env
from edgepub.shared.transient import retry_transient

from .handlers import PublishService
from .state import State
from .uploads import ModelUploads


def routes(svc: PublishService, uploads: ModelUploads) -> dict[str, rpc.Route]:
    return {
        subjects.VERB_MODEL_UPLOAD: rpc.Route(ModelUploadRequest, uploads.upload),
        subjects.VERB_MODEL_REGISTER: rpc.Route(ModelRegisterRequest, svc.register_model),
        subjects.VERB_MODEL_GET: rpc.Route(ModelGetRequest, svc.get_model),
        subjects.VERB_PIPELINE_BUILD: rpc.Route(PipelineBuildRequest, svc.build_pipeline),
        subjects.VERB_PUBLISH_CREATE: rpc.Route(PublishCreateRequest, svc.create_publish),
        subjects.VERB_PUBLISH_GET: rpc.Route(PublishGetRequest, svc.get_publish),
        subjects.VERB_PUBLISH_LIST: rpc.Route(PublishListRequest, svc.list_publishes),
    }


def outcomes_spec(env: Env) -> ConsumerSpec:
    """Push outcomes, one at a time in stream order. No deadline: an outcome is recorded
    however late; after 20 deliveries that failed, ``on_dead_outcome`` ends the publish."""
    return ConsumerSpec(
        stream=subjects.WORK_STREAM,
        durable=subjects.CONSUMER_PUBLISH_OUTCOMES,
        filter_subjects=subjects.PUBLISH_PUSHED_OR_FAILED,
        ack_wait_s=env.number("EDGEPUB_ACK_WAIT_S", 30.0),
        concurrency=1,
        batch=1,
        max_deliver=20,
    )


async def body(nc: NATS, js: JetStreamContext, stop: asyncio.Event) -> None:
    state = await retry_transient(lambda: State.open(js), what="the publish buckets")
    svc = PublishService(js=js, state=state)
    outcomes = Consumer(
        js,
        outcomes_spec(Env()),
        push_outcome_decoder.decode,
        svc.on_outcome,
        svc.on_dead_outcome,
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(rpc.serve(nc, subjects.SERVICE_PUBLISH, routes(svc, ModelUploads(js)), stop))
        tg.create_task(outcomes.run(stop))


def main() -> None:
    # the inference logs' retention (EDGEPUB_LOGS_*) and the copies kept (EDGEPUB_REPLICAS)
    limits = service.settings_or_exit("publish", bus.LogLimits.from_env)
    replicas = service.settings_or_exit("publish", bus.replicas_from_env)

    async def provision(js: JetStreamContext) -> None:
        await bus.ensure_all(js, logs=limits, replicas=replicas)

    service.run("publish", body, provision=provision)


if __name__ == "__main__":
    main()
