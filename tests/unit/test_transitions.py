"""The publish state machine: every event order, every duplicate, settles the same way."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from edgepub.services.publish.transitions import apply_outcome, steps_key, unrecordable
from edgepub.shared.schemas import (
    HelmInfo,
    ModelVersion,
    PublishRecord,
    Pushed,
    PushFailed,
    PushOutcome,
    PushStarted,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PENDING = PublishRecord(
    id=1,
    pipeline_name="p",
    pipeline_version_id=1,
    pipeline_version_name="v",
    status="PendingPublish",
)
PUSHED = Pushed(
    publish_id=1,
    pipeline_url="r/p:v",
    pipeline_digest="sha256:a",
    engine_url="e",
    helm=HelmInfo(reference="r/charts@sha256:b", chart="oci://r/charts/p", version="0.0.1-v"),
    chart_digest="sha256:b",
)
FAILED = PushFailed(publish_id=1, code="registry_auth", reason="credentials refused")
STARTED = PushStarted(publish_id=1, attempt=1)


def run(events: list[PushOutcome]) -> PublishRecord:
    record = PENDING
    for event in events:
        record = apply_outcome(record, event, NOW) or record
    return record


def test_happy_path() -> None:
    publishing = apply_outcome(PENDING, STARTED, NOW)
    assert publishing is not None and publishing.status == "Publishing"
    done = apply_outcome(publishing, PUSHED, NOW)
    assert done is not None and done.status == "Published"
    assert done.pipeline_url == "r/p:v" and done.helm == PUSHED.helm


def test_failure_carries_the_reason_and_code() -> None:
    failed = apply_outcome(PENDING, FAILED, NOW)
    assert failed is not None and failed.status == "Error"
    assert failed.error == "credentials refused [registry_auth]"


@given(st.lists(st.sampled_from([STARTED, PUSHED, FAILED]), min_size=1, max_size=8))
def test_the_first_terminal_event_wins_and_nothing_moves_after(events: list[PushOutcome]) -> None:
    final = run(events)
    terminal = next((e for e in events if not isinstance(e, PushStarted)), None)
    if terminal is None:
        assert final.status == "Publishing"
    else:
        assert final.status == ("Published" if terminal is PUSHED else "Error")
        assert apply_outcome(final, STARTED, NOW) is None
        assert apply_outcome(final, PUSHED, NOW) is None
        assert apply_outcome(final, FAILED, NOW) is None


def _model(name: str, version: str, sha: str) -> ModelVersion:
    return ModelVersion(name=name, version=version, sha256=sha, size=1, file_name=f"{name}.onnx")


def test_steps_key_is_order_and_content_sensitive() -> None:
    a, b = _model("a", "1", "aa"), _model("b", "1", "bb")
    assert steps_key([a, b]) == steps_key([_model("a", "1", "aa"), _model("b", "1", "bb")])
    assert steps_key([a, b]) != steps_key([b, a])
    assert steps_key([a]) != steps_key([_model("a", "1", "ab")])


def test_an_unrecordable_outcome_still_ends_the_publish() -> None:
    """What the dead letter of the outcomes consumer records instead: a Pushed it could
    not record becomes an Error saying where the artifact is; a PushFailed stands; a
    PushStarted (progress only) is dropped, the final outcome follows it."""
    instead = unrecordable(PUSHED, "TypeError: boom")
    assert isinstance(instead, PushFailed) and instead.code == "internal"
    assert "the registry holds r/p:v" in instead.reason and "TypeError: boom" in instead.reason
    recorded = apply_outcome(PENDING, instead, NOW)
    assert recorded is not None and recorded.status == "Error"
    assert unrecordable(FAILED, "x") is FAILED
    assert unrecordable(STARTED, "x") is None
