"""What the edge should run: the decisions (pure) and ``assignment.json`` (the record).

Ops assigns a publish to an edge (``Assignment``); the agent records the last one it ran
in ``<persist>/assignment.json`` together with the PIPELINE_URL it was started with. At the
next start ``start_target`` decides: the same PIPELINE_URL as recorded means nobody changed
the deployment, so the assignment wins (served from the cache, offline too); a different
one means the operator redeployed with a new PIPELINE_URL, which wins until Ops says
otherwise. ``judge`` decides what to do with an assignment that arrives while running.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import msgspec

from edgepub.shared.artifact import Reference, parse_reference
from edgepub.shared.edge_messages import Assignment
from edgepub.shared.errors import InvalidNameError
from edgepub.shared.stack_file import write_private

RECORD_FILE = "assignment.json"
Verdict = Literal["swap", "same", "stale"]


class Running(msgspec.Struct, frozen=True, kw_only=True):
    """The pipeline this edge serves (for heartbeats and ``/metrics``)."""

    publish_id: int | None  # None: started from PIPELINE_URL, no assignment yet
    pipeline_name: str
    pipeline_version: str
    pipeline_url: str


class AssignmentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """``assignment.json``: the assignment last served, and the PIPELINE_URL then."""

    v: int = 1
    assignment: Assignment
    start_pipeline_url: str


class StartTarget(msgspec.Struct, frozen=True, kw_only=True):
    pipeline_url: str  # what to serve (from the cache, then refreshed from the registry)
    assignment: Assignment | None  # the assignment it comes from, if any
    forget: bool = False  # the recorded assignment no longer applies: remove the record


def start_target(pipeline_url: str, record: AssignmentRecord | None) -> StartTarget:
    """Which pipeline to run at start, given PIPELINE_URL and the recorded assignment."""
    if record is None:
        return StartTarget(pipeline_url=pipeline_url, assignment=None)
    if record.start_pipeline_url == pipeline_url:
        return StartTarget(
            pipeline_url=record.assignment.pipeline_url, assignment=record.assignment
        )
    return StartTarget(pipeline_url=pipeline_url, assignment=None, forget=True)


def judge(incoming: Assignment, running: Running | None, newest: Assignment | None) -> Verdict:
    """What to do with ``incoming``, given what runs and the newest assignment accepted.

    Publish ids only grow (a replace makes a new publish), so an assignment older than one
    already accepted is a late or redelivered message: ``stale``. One whose pipeline
    already runs needs no pull: ``same`` (the publish id is adopted). Else ``swap``.
    """
    if newest is not None and incoming.publish_id < newest.publish_id:
        return "stale"
    if running is not None and running.pipeline_url == incoming.pipeline_url:
        return "same"
    return "swap"


def reference_for(pipeline_url: str, registry: str) -> Reference:
    """The reference of an assigned pipeline URL, which must be on the agent's registry
    (its OCI credentials are only ever sent there); InvalidNameError if not."""
    reference = parse_reference(pipeline_url)
    if reference.registry != registry:
        raise InvalidNameError(
            f"assigned pipeline URL {pipeline_url!r} is on registry {reference.registry}, not "
            f"on this edge's registry {registry}; its credentials are only sent there"
        )
    return reference


_decoder = msgspec.json.Decoder(AssignmentRecord)


def record_path(persist_dir: Path) -> Path:
    return persist_dir / RECORD_FILE


def read_record(persist_dir: Path) -> AssignmentRecord | None:
    """The recorded assignment; None when there is none. Raises OSError or msgspec errors
    for a file that cannot be read or decoded."""
    try:
        data = record_path(persist_dir).read_bytes()
    except FileNotFoundError:
        return None
    return _decoder.decode(data)


def write_record(persist_dir: Path, record: AssignmentRecord) -> None:
    write_private(record_path(persist_dir), msgspec.json.format(msgspec.json.encode(record)))


def forget_record(persist_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(persist_dir).unlink()
