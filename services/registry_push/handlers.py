"""registry-push's handler: one PublishRequested in, PushStarted then Pushed or PushFailed out.

Outcomes (the runner acks by them):

- pushed: ``Pushed`` is published, then the message is acked (confirmed);
- registry unreachable (refused, timed out, 5xx): ``Retry`` with backoff;
- anything a retry cannot fix (credentials refused, model missing or damaged, bad name,
  empty pipeline): ``PushFailed`` at once, with the error's code and a reason a person can
  act on;
- anything else (NATS trouble, a full disk, a cache directory it may not write, a bug):
  raised, so the runner naks with backoff and the message comes back.

Every retry is bounded by the runner: once a message has failed on its
``EDGEPUB_PUSH_MAX_DELIVER``-th delivery, or fails ``EDGEPUB_REGISTRY_DEADLINE_S`` after
the server stored it, ``dead_letter`` publishes ``PushFailed`` with the last reason (and
the message is termed only once that is stored). So every publish ends.

Speed: the chart is pushed while the models are; a model the registry already holds is
not fetched at all; one it lacks is streamed from the object store into the upload.
Every push is idempotent (content-addressed blobs, deterministic manifests), so a message
redelivered after a crash mid-push simply pushes again and ends the same way. Each attempt
has its own registry session and stops its threads when cancelled (``session.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext

from edgepub.shared import artifact, schemas, subjects
from edgepub.shared.errors import (
    EdgepubError,
    InvalidRequestError,
    RegistryUnavailableError,
    ServiceUnavailableError,
)
from edgepub.shared.logs import redact
from edgepub.shared.oci import BlobPushed, RegistryUnreachableError
from edgepub.shared.runner import Delivery, GaveUp, Retry, backoff, failure_text
from edgepub.shared.schemas import HelmInfo, PublishRequested, Pushed, PushFailed, PushStarted

from . import push
from .cache import ModelCache
from .config import PushSettings
from .definition import ModelLayer, PublishPlan, plan
from .session import PushSession, both

log = structlog.get_logger("edgepub.registry_push")


def retry_delay(attempt: int, now: float, deadline: float, cap: float) -> float:
    """Exponential backoff, never sleeping past the deadline (the last try lands on it)."""
    return max(0.05, min(backoff(attempt, base=0.5, cap=cap), deadline - now))


def unreachable_reason(exc: RegistryUnavailableError, registry: str, waited_s: float) -> str:
    cause = exc.cause if isinstance(exc, RegistryUnreachableError) else exc.message
    return (
        f"registry {registry} unreachable for {waited_s:.0f} s: {cause}; check that it is "
        f"running and that EDGEPUB_REGISTRY={registry} is right"
    )


def gave_up_failure(gave_up: GaveUp, settings: PushSettings) -> tuple[str, str]:
    """(code, reason) of the PushFailed for a message the runner gave up on (pure): the
    last error's own code and words where it has them, else what was tried and what the
    last attempt raised."""
    error = gave_up.error
    cause = error.__cause__ if isinstance(error, Retry) and error.__cause__ else error
    if isinstance(cause, RegistryUnavailableError):
        return cause.code, unreachable_reason(cause, settings.registry.registry, gave_up.age_s)
    if isinstance(cause, EdgepubError):
        return cause.code, cause.message
    n = gave_up.attempts
    tried = f"{n} attempt{'s' if n != 1 else ''} in {gave_up.age_s:.0f} s"
    if gave_up.why == "deadline":
        limit = f"EDGEPUB_REGISTRY_DEADLINE_S={settings.registry.deadline_s:g}"
    else:
        limit = f"EDGEPUB_PUSH_MAX_DELIVER={settings.max_deliver}"
    reason = f"registry-push gave up after {tried} ({limit}): {failure_text(cause, n)}"
    if isinstance(cause, OSError) and str(cause.filename or "").startswith(settings.cache_dir):
        reason += (
            f"; check that registry-push may write its cache directory "
            f"EDGEPUB_CACHE_DIR={settings.cache_dir} and that its disk has room"
        )
    # Never a registered secret, whatever the error quoted.
    return EdgepubError.code, str(redact(None, "", {"reason": reason})["reason"])


class Unpushable(msgspec.Struct, frozen=True, kw_only=True):
    """A PublishRequested whose publish id reads but whose rest does not (say, an engine
    config beyond the limits, written before the publish service checked them)."""

    publish_id: int
    error: str


class _PublishId(schemas.Base, frozen=True, kw_only=True):
    publish_id: int


def decode_request(data: bytes) -> PublishRequested | Unpushable:
    """The work message, or what is known of it: a publish that cannot be pushed is failed
    with the reason rather than left pending; one without even an id is poison (the runner
    terms it)."""
    try:
        return schemas.decode(PublishRequested, data)
    except msgspec.ValidationError as exc:
        envelope = schemas.decode(_PublishId, data)
        return Unpushable(publish_id=envelope.publish_id, error=str(exc))


class PushHandler:
    def __init__(
        self,
        js: JetStreamContext,
        cache: ModelCache,
        settings: PushSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._cache = cache
        self._settings = settings
        self._clock = clock
        self._chart_dir = Path(settings.cache_dir) / "charts"

    async def __call__(self, req: PublishRequested | Unpushable, delivery: Delivery) -> None:
        if isinstance(req, Unpushable):
            reason = f"publish {req.publish_id} cannot be pushed: {req.error}"
            await self._fail(req.publish_id, InvalidRequestError.code, reason, log)
            return
        pid = req.publish_id
        blog = log.bind(publish_id=pid, pipeline=req.pipeline_version.pipeline_name)
        attempt = delivery.num_delivered
        started = PushStarted(publish_id=pid, attempt=attempt)
        await self._emit(subjects.PUBLISH_PUSH_STARTED, started, f"{pid}-started-{attempt}")
        blog.info("push_started", attempt=attempt, version=req.pipeline_version.name)
        session = PushSession(self._settings.registry, timeout_s=self._settings.request_timeout_s)
        try:
            pushed = await self._push(req, session, blog)
        except RegistryUnavailableError as exc:
            raise self._retry(exc, delivery, blog) from exc
        except ServiceUnavailableError:
            raise
        except EdgepubError as exc:
            await self._fail(pid, exc.code, exc.message, blog)
            return
        finally:
            session.close()  # every thread of this attempt has ended (PushSession.call)
        await self._emit(subjects.PUBLISH_PUSHED, pushed, f"{pid}-pushed")
        blog.info("push_done", pipeline_url=pushed.pipeline_url, chart_digest=pushed.chart_digest)

    async def dead_letter(self, req: PublishRequested | Unpushable, gave_up: GaveUp) -> None:
        """The runner gave up on this message: its publish fails with the last reason.
        Raises if the PushFailed is not stored (the runner then keeps the message)."""
        code, reason = gave_up_failure(gave_up, self._settings)
        blog = log.bind(publish_id=req.publish_id, why=gave_up.why, attempts=gave_up.attempts)
        await self._fail(req.publish_id, code, reason, blog)

    async def _push(self, req: PublishRequested, session: PushSession, blog: Any) -> Pushed:
        the_plan = plan(req, self._settings.registry)
        async with self._cache.using(layer.model for layer in the_plan.layers):
            # Where each model comes from, decided first: a missing model fails the publish
            # before anything is pushed (the chart included).
            sources = {
                layer.model.sha256: await self._source(the_plan, layer, session)
                for layer in the_plan.layers
            }
            pipeline_digest, chart_digest = await both(
                self._push_pipeline(the_plan, sources, session, blog),
                self._push_chart(the_plan, session, blog),
            )
        return self._pushed(the_plan, pipeline_digest, chart_digest)

    async def _source(self, the_plan: PublishPlan, layer: ModelLayer, session: PushSession) -> str:
        """ "registry" (it has the layer), "cache" (a verified local file) or
        "object_store" (which is checked to hold it: NotFoundError otherwise).

        Every model file that goes into the registry is first checked to be an ONNX model
        whole in itself (no external data): a cached one here, a streamed one as it passes
        (its last bytes are held back until the check is done). So a layer the registry
        already holds was checked when it was uploaded."""
        repo = the_plan.pipeline_repository
        if await session.call(session.client.has_blob, repo, layer.digest):
            return "registry"
        if await self._cache.cached(layer.model, session):
            return "cache"
        await self._cache.require(layer.model)
        return "object_store"

    async def _push_pipeline(
        self, the_plan: PublishPlan, sources: dict[str, str], session: PushSession, blog: Any
    ) -> str:
        t0 = time.monotonic()
        for layer in the_plan.layers:
            await self._upload_layer(the_plan, layer, sources[layer.model.sha256], session, blog)
        files = {layer.model.sha256: self._cache.path(layer.model) for layer in the_plan.layers}
        on_blob = self._blob_logger(blog, "config")
        digest = await session.call(push.push_pipeline, session.client, the_plan, files, on_blob)
        blog.info(
            "pipeline_pushed",
            url=the_plan.pipeline_url,
            digest=digest,
            seconds=round(time.monotonic() - t0, 3),
        )
        return digest

    async def _push_chart(self, the_plan: PublishPlan, session: PushSession, blog: Any) -> str:
        t0 = time.monotonic()
        digest = await session.call(
            push.push_chart, session.client, the_plan, self._chart_dir, self._blob_logger(blog)
        )
        blog.info(
            "chart_pushed",
            chart=the_plan.chart_url,
            version=the_plan.chart_version,
            digest=digest,
            seconds=round(time.monotonic() - t0, 3),
        )
        return digest

    async def _upload_layer(
        self, the_plan: PublishPlan, layer: ModelLayer, source: str, session: PushSession, blog: Any
    ) -> None:
        """Put the layer in the registry from ``source``; a model is streamed from the
        object store into the upload (and the cache) as it arrives."""
        t0 = time.monotonic()
        repo, client, model = the_plan.pipeline_repository, session.client, layer.model
        if source == "cache":
            path = self._cache.path(model)
            await session.call(push.upload_file, client, repo, layer, path)
        elif source == "object_store":
            await self._cache.stream(
                model,
                lambda reader: client.upload_blob(repo, layer.digest, model.size, reader),
                session,
            )
        blog.info(
            "layer_pushed",
            model=model.name,
            digest=layer.digest,
            size=model.size,
            seconds=round(time.monotonic() - t0, 3),
            uploaded=source != "registry",
            source=source,
        )

    def _pushed(self, the_plan: PublishPlan, pipeline_digest: str, chart_digest: str) -> Pushed:
        reg = self._settings.registry
        return Pushed(
            publish_id=the_plan.publish_id,
            pipeline_url=the_plan.pipeline_url,
            pipeline_digest=pipeline_digest,
            engine_url=reg.engine_image,
            helm=HelmInfo(
                reference=artifact.chart_reference(reg.registry, reg.repository, chart_digest),
                chart=the_plan.chart_url,
                version=the_plan.chart_version,
                values={},
            ),
            chart_digest=chart_digest,
        )

    @staticmethod
    def _blob_logger(blog: Any, *kinds: str) -> Callable[[BlobPushed], None]:
        def on_blob(blob: BlobPushed) -> None:  # called from a push thread
            if kinds and blob.kind not in kinds:
                return
            blog.info(
                f"{blob.kind}_pushed",
                digest=blob.digest,
                size=blob.size,
                seconds=round(blob.seconds, 3),
                uploaded=blob.uploaded,
            )

        return on_blob

    def _retry(self, exc: RegistryUnavailableError, delivery: Delivery, blog: Any) -> Retry:
        """Try again soon; the runner ends it at the deadline (and says so via
        ``dead_letter``)."""
        now = self._clock()
        deadline = delivery.stored_at + self._settings.registry.deadline_s
        attempt = delivery.num_delivered
        delay = retry_delay(attempt, now, deadline, self._settings.retry_max_s)
        blog.warning(
            "push_retry",
            attempt=attempt,
            error=exc.message,
            delay_s=round(delay, 3),
            deadline_in_s=round(deadline - now, 1),
        )
        return Retry(exc.message, delay=delay)

    async def _fail(self, pid: int, code: str, reason: str, blog: Any) -> None:
        failed = PushFailed(publish_id=pid, code=code, reason=reason)
        await self._emit(subjects.PUBLISH_PUSH_FAILED, failed, f"{pid}-failed")
        blog.error("push_failed", code=code, reason=reason)

    async def _emit(self, subject: str, event: msgspec.Struct, msg_id: str) -> None:
        await self._js.publish(
            subject, schemas.encode(event), headers={subjects.HEADER_MSG_ID: msg_id}
        )
