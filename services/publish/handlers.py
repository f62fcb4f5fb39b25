"""What the publish service does with each request and each push outcome."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec
import structlog
from nats.js import JetStreamContext

from edgepub.shared import subjects
from edgepub.shared.errors import (
    EmptyPipelineError,
    InvalidModelError,
    InvalidRequestError,
    NotFoundError,
)
from edgepub.shared.names import check_name
from edgepub.shared.objects import digest_hex
from edgepub.shared.runner import Delivery, GaveUp, Retry, failure_text
from edgepub.shared.schemas import (
    ModelGetRequest,
    ModelRegisterRequest,
    ModelVersion,
    PipelineBuildRequest,
    PipelineRecord,
    PipelineVersion,
    PublishCreateRequest,
    PublishGetRequest,
    PublishList,
    PublishListRequest,
    PublishRecord,
    PublishRequested,
    PushOutcome,
    encode,
    utcnow,
)
from edgepub.shared.version import VERSION

from .state import Conflict, State
from .transitions import apply_outcome, steps_key, unrecordable
from .uploads import matches, stored_model

log = structlog.get_logger("edgepub.publish")


@dataclass
class PublishService:
    js: JetStreamContext
    state: State

    # --- models -----------------------------------------------------------------------------

    async def register_model(self, user: str, req: ModelRegisterRequest) -> ModelVersion:
        check_name("model", req.name)
        await self._check_model_bytes(req)
        latest = await self._latest_model(req.name)
        if latest is not None and latest.sha256 == req.sha256:
            return latest  # same bytes under the same name: the same version
        model = ModelVersion(
            name=req.name,
            version=str(uuid.uuid4()),
            sha256=req.sha256,
            size=req.size,
            file_name=req.file_name,
            inputs=req.inputs,
            outputs=req.outputs,
            created_by=user,
            created_at=utcnow(),
        )
        await self.state.models.create(subjects.model_key(model.name, model.version), model)
        log.info("model_registered", model=model.name, version=model.version, size=model.size)
        return model

    async def _check_model_bytes(self, req: ModelRegisterRequest) -> None:
        stored = await stored_model(self.js, req.sha256)
        if stored is None:
            raise InvalidModelError(
                f"model {req.name!r}: no uploaded bytes named {req.sha256}; upload the file first"
            )
        if not matches(stored, req.sha256, req.size):
            raise InvalidModelError(
                f"model {req.name!r}: stored bytes do not match the declared sha256/size "
                f"(stored {digest_hex(stored)[:12]}…/{stored.size}, declared "
                f"{req.sha256[:12]}…/{req.size}); upload the file again to replace them"
            )

    async def _latest_model(self, name: str) -> ModelVersion | None:
        latest: ModelVersion | None = None
        async for model in self.state.models.scan(f"{subjects.token(name)}.*"):
            if latest is None or model.created_at > latest.created_at:
                latest = model
        return latest

    async def get_model(self, user: str, req: ModelGetRequest) -> ModelVersion:
        check_name("model", req.name)
        if req.version is None:
            found = await self._latest_model(req.name)
        else:
            got = await self.state.models.get(subjects.model_key(req.name, req.version))
            found = got[0] if got else None
        if found is None:
            which = f"version {req.version} of " if req.version else ""
            raise NotFoundError(f"no {which}model {req.name!r}; upload_model({req.name!r}, path)")
        return found

    # --- pipelines --------------------------------------------------------------------------

    async def build_pipeline(self, user: str, req: PipelineBuildRequest) -> PipelineRecord:
        check_name("pipeline", req.name)
        while True:
            got = await self.state.pipelines.get(req.name)
            if got is not None:
                return got[0]
            record = PipelineRecord(
                id=await self.state.counters.next("pipeline"),
                name=req.name,
                created_by=user,
                created_at=utcnow(),
            )
            try:
                await self.state.pipelines.create(req.name, record)
                log.info("pipeline_created", pipeline=req.name, id=record.id)
                return record
            except Conflict:
                continue

    async def _version_for(self, pipeline: str, steps: tuple[ModelVersion, ...]) -> PipelineVersion:
        """The pipeline version for these steps: the latest one if equal, else a new one."""
        key = steps_key(steps)
        while True:
            got = await self.state.pipelines.get(pipeline)
            if got is None:
                raise NotFoundError(f"unknown pipeline {pipeline!r}; build_pipeline first")
            record, rev = got
            if record.latest_version_id is not None:
                latest = await self.state.versions.get(str(record.latest_version_id))
                if latest is not None and latest[0].steps_key == key:
                    return latest[0]
            version = PipelineVersion(
                id=await self.state.counters.next("pipeline_version"),
                name=str(uuid.uuid4()),
                pipeline_name=pipeline,
                steps=steps,
                steps_key=key,
                created_at=utcnow(),
            )
            await self.state.versions.create(str(version.id), version)
            try:
                await self.state.pipelines.update(
                    pipeline, _with_latest(record, version.id), revision=rev
                )
            except Conflict:
                continue
            log.info("pipeline_version_created", pipeline=pipeline, version=version.name)
            return version

    # --- publishes --------------------------------------------------------------------------

    async def create_publish(self, user: str, req: PublishCreateRequest) -> PublishRecord:
        _check_request_id(req.request_id)
        check_name("pipeline", req.pipeline_name)
        owner = await self.state.requests.owner(req.request_id)
        if owner is not None:
            existing = await self.state.publishes.get(str(owner))
            if existing is not None:
                await self._resume(existing[0])
                return existing[0]
        if not req.steps:
            raise EmptyPipelineError(
                f"pipeline {req.pipeline_name!r} has no steps; "
                "add_model_step(model) before publish()"
            )
        for step in req.steps:
            check_name("model", step.name)
        steps = tuple([await self._resolve_step(s.name, s.version) for s in req.steps])
        for replaced in req.replaces:
            if await self.state.publishes.get(str(replaced)) is None:
                raise NotFoundError(f"publish {replaced} (in replaces) does not exist")
        version = await self._version_for(req.pipeline_name, steps)
        publish_id = owner or await self.state.requests.claim(
            req.request_id, await self.state.counters.next("publish")
        )
        now = utcnow()
        record = PublishRecord(
            id=publish_id,
            pipeline_name=req.pipeline_name,
            pipeline_version_id=version.id,
            pipeline_version_name=version.name,
            status="PendingPublish",
            engine_config=req.engine_config,
            created_by=user,
            created_at=now,
            updated_at=now,
            created_on_version=VERSION,
            replaces=list(req.replaces),
            request_id=req.request_id,
        )
        try:
            await self.state.publishes.create(str(publish_id), record)
        except Conflict:
            got = await self.state.publishes.get(str(publish_id))
            assert got is not None
            return got[0]
        blog = log.bind(publish_id=publish_id, pipeline=req.pipeline_name)
        blog.info("publish_created", version=version.name, created_by=user)
        await self._request_push(record, version)
        await self._announce(record)
        return record

    async def _resume(self, record: PublishRecord) -> None:
        """A re-sent request: finish what a crashed attempt may have left undone. The work
        message id is the publish's, so a push requested twice is pushed once."""
        if record.status == "PendingPublish":
            version = await self.state.versions.get(str(record.pipeline_version_id))
            if version is not None:
                await self._request_push(record, version[0])
        await self._announce(record)

    async def _resolve_step(self, name: str, version: str) -> ModelVersion:
        got = await self.state.models.get(subjects.model_key(name, version))
        if got is None:
            raise NotFoundError(f"model {name!r} version {version} does not exist")
        return got[0]

    async def _request_push(self, record: PublishRecord, version: PipelineVersion) -> None:
        event = PublishRequested(
            publish_id=record.id,
            pipeline_version=version,
            engine_config=record.engine_config,
            requested_at=record.created_at,
            created_on_version=record.created_on_version,
        )
        await self.js.publish(
            subjects.PUBLISH_REQUESTED,
            encode(event),
            headers={subjects.HEADER_MSG_ID: f"publish-{record.id}-requested"},
        )

    async def _announce(self, record: PublishRecord) -> None:
        """Put the record's current state on its events subject for watchers (the SDK)."""
        await self.js.publish(subjects.publish_events(record.id), encode(record))

    async def get_publish(self, user: str, req: PublishGetRequest) -> PublishRecord:
        got = await self.state.publishes.get(str(req.id))
        if got is None:
            raise NotFoundError(f"publish {req.id} does not exist")
        return got[0]

    async def list_publishes(self, user: str, req: PublishListRequest) -> PublishList:
        check_name("pipeline", req.pipeline_name)
        if await self.state.pipelines.get(req.pipeline_name) is None:
            raise NotFoundError(f"unknown pipeline {req.pipeline_name!r}")
        found = [
            p async for p in self.state.publishes.scan() if p.pipeline_name == req.pipeline_name
        ]
        return PublishList(publishes=tuple(sorted(found, key=lambda p: p.id)))

    # --- outcomes from registry-push --------------------------------------------------------

    async def on_outcome(self, outcome: PushOutcome, delivery: Delivery) -> None:
        key = str(outcome.publish_id)
        got = await self.state.publishes.get(key)
        if got is None:
            log.warning("outcome_for_unknown_publish", publish_id=outcome.publish_id)
            return
        record, rev = got
        changed = apply_outcome(record, outcome, utcnow())
        if changed is None:
            return
        try:
            await self.state.publishes.update(key, changed, revision=rev)
        except Conflict:
            raise Retry("publish record changed under us", delay=0.05) from None
        log.info(
            "publish_status",
            publish_id=changed.id,
            pipeline=changed.pipeline_name,
            status=changed.status,
            error=changed.error,
        )
        await self._announce(changed)

    async def on_dead_outcome(self, outcome: PushOutcome, gave_up: GaveUp) -> None:
        """An outcome not recorded in ``max_deliver`` deliveries. One more try (the trouble
        may have passed); failing that, the publish ends ``Error`` with the reason, so it
        is never left Publishing. Raises if even that is not written: the runner keeps the
        message and comes back to it."""
        try:
            await self.on_outcome(outcome, gave_up.delivery)
            return
        except Exception as exc:
            error = exc
        reason = failure_text(error, gave_up.attempts)
        instead = unrecordable(outcome, reason)
        log.error(
            "outcome_unrecorded",
            publish_id=outcome.publish_id,
            outcome=type(outcome).__name__,
            attempts=gave_up.attempts,
            reason=reason,
            instead=None if instead is None else type(instead).__name__,
        )
        if instead is None:
            return  # progress only: the final outcome follows
        if instead is outcome:
            raise error  # nothing else to record: kept, and tried again later
        await self.on_outcome(instead, gave_up.delivery)


def _with_latest(record: PipelineRecord, version_id: int) -> PipelineRecord:
    return msgspec.structs.replace(record, latest_version_id=version_id)


def _check_request_id(request_id: str) -> None:
    try:
        uuid.UUID(request_id)
    except ValueError:
        raise InvalidRequestError(f"request_id {request_id!r} is not a UUID") from None
