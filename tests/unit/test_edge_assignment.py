"""Which pipeline an edge runs: at start (PIPELINE_URL vs the recorded assignment) and when
an assignment arrives (stale, already running, swap). Pure, no event loop."""

from __future__ import annotations

import stat
from pathlib import Path

import msgspec
import pytest

from edgepub.edge_agent.assignment import (
    AssignmentRecord,
    Running,
    forget_record,
    judge,
    read_record,
    record_path,
    reference_for,
    start_target,
    write_record,
)
from edgepub.shared.edge_messages import Assignment
from edgepub.shared.errors import InvalidNameError

START = "reg.example:5000/edgepub/pipelines/fraud:v1"
V2 = "reg.example:5000/edgepub/pipelines/fraud:v2"
V3 = "reg.example:5000/edgepub/pipelines/fraud:v3"


def assignment(publish_id: int, url: str = V2) -> Assignment:
    return Assignment(
        publish_id=publish_id,
        pipeline_name="fraud",
        pipeline_version_id=publish_id,
        pipeline_version_name=url.rsplit(":", 1)[-1],
        pipeline_url=url,
    )


def running(url: str, publish_id: int | None = None) -> Running:
    return Running(
        publish_id=publish_id,
        pipeline_name="fraud",
        pipeline_version=url.rsplit(":", 1)[-1],
        pipeline_url=url,
    )


# --- at start ----------------------------------------------------------------------------


def test_without_a_record_pipeline_url_is_served() -> None:
    target = start_target(START, None)
    assert (target.pipeline_url, target.assignment, target.forget) == (START, None, False)


def test_a_record_made_under_the_same_pipeline_url_wins() -> None:
    a = assignment(7)
    target = start_target(START, AssignmentRecord(assignment=a, start_pipeline_url=START))
    assert (target.pipeline_url, target.assignment, target.forget) == (V2, a, False)


def test_an_operator_who_changed_pipeline_url_since_wins_and_the_record_is_forgotten() -> None:
    record = AssignmentRecord(assignment=assignment(7), start_pipeline_url=START)
    target = start_target(V3, record)
    assert (target.pipeline_url, target.assignment, target.forget) == (V3, None, True)


def test_pipeline_url_set_to_the_assigned_url_itself_still_counts_as_a_change() -> None:
    # the operator redeployed with the URL Ops had assigned: it is theirs now (no publish id)
    record = AssignmentRecord(assignment=assignment(7), start_pipeline_url=START)
    target = start_target(V2, record)
    assert (target.pipeline_url, target.assignment, target.forget) == (V2, None, True)


# --- while running -----------------------------------------------------------------------


def test_an_assignment_of_a_new_pipeline_is_swapped_in() -> None:
    assert judge(assignment(2, V2), running(START), None) == "swap"
    assert judge(assignment(3, V3), running(V2, 2), assignment(2, V2)) == "swap"


def test_an_assignment_of_what_already_runs_is_the_same() -> None:
    assert judge(assignment(2, V2), running(V2, 2), assignment(2, V2)) == "same"
    # started from PIPELINE_URL, then Ops names that very pipeline: no pull, publish adopted
    assert judge(assignment(1, START), running(START), None) == "same"


def test_an_assignment_older_than_one_accepted_is_stale() -> None:
    assert judge(assignment(2, V2), running(V3, 3), assignment(3, V3)) == "stale"
    # older than one still being pulled (not running yet) is stale too
    assert judge(assignment(2, V2), running(START), assignment(3, V3)) == "stale"


def test_the_same_publish_again_is_not_stale() -> None:
    # a redelivery of the newest assignment: handled again (a retry now, or "same")
    assert judge(assignment(3, V3), running(START), assignment(3, V3)) == "swap"


def test_no_running_pipeline_means_a_swap() -> None:
    assert judge(assignment(1, START), None, None) == "swap"


# --- the assigned URL --------------------------------------------------------------------


def test_an_assigned_url_on_the_agents_registry_is_accepted() -> None:
    ref = reference_for(V2, "reg.example:5000")
    assert (ref.repository, ref.tag) == ("edgepub/pipelines/fraud", "v2")


def test_an_assigned_url_on_another_registry_is_refused_naming_both() -> None:
    with pytest.raises(InvalidNameError, match=r"other\.example.*reg\.example:5000"):
        reference_for("other.example/edgepub/pipelines/fraud:v2", "reg.example:5000")


def test_an_assigned_url_that_is_not_a_reference_is_refused() -> None:
    with pytest.raises(InvalidNameError, match="not an OCI reference"):
        reference_for("not a url", "reg.example:5000")


# --- the record --------------------------------------------------------------------------


def test_the_record_round_trips_privately_and_is_forgotten(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    record = AssignmentRecord(assignment=assignment(7), start_pipeline_url=START)
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record
    assert stat.S_IMODE(record_path(tmp_path).stat().st_mode) == 0o600
    forget_record(tmp_path)
    forget_record(tmp_path)  # twice is fine
    assert read_record(tmp_path) is None


def test_a_damaged_record_is_a_decode_error(tmp_path: Path) -> None:
    record_path(tmp_path).write_bytes(b'{"v": 1, "assignment": {}}')
    with pytest.raises(msgspec.ValidationError):
        read_record(tmp_path)
