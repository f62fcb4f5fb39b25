"""Publish state machine and pipeline-version identity: pure decisions, no I/O.

PendingPublish --PushStarted--> Publishing --Pushed--> Published
      |                             |
      +---------PushFailed----------+--> Error

Terminal states never change again; events that arrive late or twice are ignored, so
redelivered events are harmless. An outcome the service could not record however often it
tried ends the publish too (``unrecordable``): never left Publishing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

import msgspec

from edgepub.shared.schemas import (
    TERMINAL_STATUSES,
    ModelVersion,
    PublishRecord,
    Pushed,
    PushFailed,
    PushOutcome,
    PushStarted,
    encode_json,
)


def steps_key(steps: Sequence[ModelVersion]) -> str:
    """Identity of a pipeline's steps: same models, same versions, same bytes, same order."""
    canon = [[s.name, s.version, s.sha256] for s in steps]
    return hashlib.sha256(encode_json(canon)).hexdigest()


def apply_outcome(
    record: PublishRecord, outcome: PushOutcome, now: datetime
) -> PublishRecord | None:
    """The record after ``outcome``, or None when the outcome changes nothing."""
    if record.status in TERMINAL_STATUSES:
        return None
    if isinstance(outcome, PushStarted):
        if record.status == "Publishing":
            return None
        return msgspec.structs.replace(record, status="Publishing", updated_at=now)
    if isinstance(outcome, Pushed):
        return msgspec.structs.replace(
            record,
            status="Published",
            pipeline_url=outcome.pipeline_url,
            pipeline_digest=outcome.pipeline_digest,
            engine_url=outcome.engine_url,
            helm=outcome.helm,
            chart_digest=outcome.chart_digest,
            error=None,
            updated_at=now,
        )
    if isinstance(outcome, PushFailed):
        return msgspec.structs.replace(
            record, status="Error", error=f"{outcome.reason} [{outcome.code}]", updated_at=now
        )
    raise TypeError(f"unknown push outcome {type(outcome).__name__}")


UNRECORDED_CODE = "internal"


def unrecordable(outcome: PushOutcome, reason: str) -> PushFailed | None:
    """What to record instead of an outcome that could not be recorded (``reason``): for
    a ``Pushed``, an ``Error`` that says where the artifact is; a ``PushFailed`` stands as
    it is; a ``PushStarted`` (progress only) is dropped: the final outcome follows it."""
    if isinstance(outcome, PushStarted):
        return None
    if isinstance(outcome, PushFailed):
        return outcome
    if isinstance(outcome, Pushed):
        return PushFailed(
            publish_id=outcome.publish_id,
            code=UNRECORDED_CODE,
            reason=(
                f"the registry holds {outcome.pipeline_url}, but the publish service could not "
                f"record it: {reason}; publish again to record it"
            ),
        )
    raise TypeError(f"unknown push outcome {type(outcome).__name__}")
