"""Edges on the wire and in KV: what the SDK asks the token service, what an edge reports,
what Ops tells an edge, and the records the token service keeps.

The join token itself is never stored: a record holds its sha256 only, so reading the
``edgepub_edges`` bucket gives no one a way in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from .schemas import Base, Id, utcnow

EdgeName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=63, pattern=r"\A[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\A[^\x00-\x1f\x7f]+\Z")]
Tags = Annotated[tuple[Tag, ...], msgspec.Meta(max_length=64)]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]

# pending: added, its join token not used yet; joined: it has a credential;
# revoked: removed (the record stays as a tombstone, the name is free again).
EdgeState = Literal["pending", "joined", "revoked"]
# What list_edges shows: the record's state, with time applied (a token or a credential
# past its limit is "expired").
CredentialState = Literal["pending", "joined", "expired", "revoked"]
ConnectionStatus = Literal["online", "offline", "never"]


class Assignment(Base, frozen=True, kw_only=True):
    """The publish an edge should run, and where its pipeline is."""

    publish_id: int
    pipeline_name: str
    pipeline_version_id: int
    pipeline_version_name: str
    pipeline_url: str
    workspace_id: int = 1


class EdgeRecord(Base, frozen=True, kw_only=True):
    """``edge.<name>`` in the edges bucket: who the edge is and what it should run."""

    v: int = 1
    id: str  # UUID
    name: str
    tags: tuple[str, ...] = ()
    workspace_id: int = 1
    workspace_name: str = "default"
    assignment: Assignment
    # when the token service set ``assignment`` (add, or a replace moving the edge); None
    # in records written before issue 12
    assigned_at: datetime | None = None
    cpus: float = 1.0
    memory: str = "1Gi"
    state: EdgeState = "pending"
    join_token_sha256: str = ""
    join_token_expires_at: datetime
    public_key: str | None = None  # the edge's nkey (it keeps the seed)
    joined_at: datetime | None = None
    credential_expires_at: datetime | None = None  # moved forward by every contact
    created_at: datetime = msgspec.field(default_factory=utcnow)
    created_by: str = ""
    created_on_version: str = ""
    revoked_at: datetime | None = None


class EdgeSeen(Base, frozen=True, kw_only=True):
    """``seen.<name>``: what the edge last reported (a heartbeat), kept apart from the
    record so reports never race with add/remove/move."""

    v: int = 1
    at: datetime
    status: ShortText = ""
    running_publish_id: int | None = None
    running_version: ShortText | None = None
    agent_version: ShortText = ""
    backlog: int | None = None  # local log rows not yet acknowledged (issue 10 on)
    # Issue 12 on (None from older agents and in older records). Times are the token
    # service's clock: the edge reports ages, the service subtracts them from its now.
    running_since: datetime | None = None  # when the edge started serving what it runs
    traffic: Traffic | None = None  # inference over the last heartbeat interval
    log: LogSeen | None = None
    failed: SwapFailedSeen | None = None  # the assigned pipeline it could not load


class EdgeInfo(Base, frozen=True, kw_only=True):
    """An edge as ``list_edges`` shows it: the record, its last report, and time applied."""

    id: str
    name: str
    tags: tuple[str, ...]
    workspace_id: int
    workspace_name: str
    publish_id: int  # should_run_publish
    pipeline_name: str
    pipeline_version_id: int
    pipeline_version_name: str
    pipeline_url: str
    spiffe_id: str
    cpus: float
    memory: str
    created_at: datetime
    created_on_version: str
    credential_state: CredentialState
    credential_expires_at: datetime | None
    revoked_at: datetime | None = None  # when remove_edge revoked it (tombstones only)
    connection: ConnectionStatus
    offline_after_s: float
    last_seen: datetime | None
    running_publish_id: int | None
    running_version: str | None
    agent_version: str | None
    status: str | None
    backlog: int | None
    traffic: Traffic | None = None
    log: LogSeen | None = None
    failed: SwapFailedSeen | None = None
    # EDGE_BUNDLE with JOIN_TOKEN=omitted_for_replace (as the seed shows replaced
    # locations): the join token itself is shown once, by add_edge, and never stored.
    bundle: str


def credential_state(record: EdgeRecord, now: datetime) -> CredentialState:
    """The record's state with time applied (list_edges and the dashboard share it)."""
    if record.state == "revoked":
        return "revoked"
    if record.state == "pending":
        return "expired" if record.join_token_expires_at <= now else "pending"
    expires = record.credential_expires_at
    return "expired" if expires is None or expires <= now else "joined"


def connection_of(
    last_seen: datetime | None, now: datetime, offline_after_s: float
) -> ConnectionStatus:
    """``online`` while the last heartbeat is at most ``offline_after_s`` old (the boundary
    itself is online), ``offline`` after, ``never`` without one."""
    if last_seen is None:
        return "never"
    return "online" if (now - last_seen).total_seconds() <= offline_after_s else "offline"


def own_report(record: EdgeRecord, seen: EdgeSeen | None) -> EdgeSeen | None:
    """``seen`` if it is this edge's: a report from before the record was created belongs
    to an earlier edge of that name (removed, then added again)."""
    return None if seen is None or seen.at < record.created_at else seen


def edge_connection(
    record: EdgeRecord, seen: EdgeSeen | None, now: datetime, offline_after_s: float
) -> ConnectionStatus:
    """The record's connection (``seen`` already its own): a removed edge is never online
    (its connections were closed, its connects are refused), ``offline`` since its last
    report or ``never``."""
    connection = connection_of(seen.at if seen else None, now, offline_after_s)
    return "offline" if record.state == "revoked" and connection == "online" else connection


def credential_end(record: EdgeRecord) -> datetime | None:
    """When the credential ends: its expiry, or the removal if that came first."""
    expires = record.credential_expires_at
    if record.state == "revoked" and expires is not None and record.revoked_at is not None:
        return min(expires, record.revoked_at)
    return expires


# --- SDK -> token service -------------------------------------------------------------------


class EdgeAddRequest(Base, frozen=True, kw_only=True):
    publish_id: Id
    name: EdgeName
    tags: Tags = ()


class EdgeAdded(Base, frozen=True, kw_only=True):
    edge: EdgeInfo
    bundle: str  # EDGE_BUNDLE: shown once, never stored


class EdgeRemoveRequest(Base, frozen=True, kw_only=True):
    name: EdgeName


class EdgeRemoved(Base, frozen=True, kw_only=True):
    name: str
    disconnected: int  # connections the servers were told to close


class EdgeListRequest(Base, frozen=True, kw_only=True):
    pipeline_name: EdgeName | None = None  # None: every edge
    publish_id: Id | None = None
    include_removed: bool = False


class EdgeList(Base, frozen=True, kw_only=True):
    edges: tuple[EdgeInfo, ...]


class EdgeMoveRequest(Base, frozen=True, kw_only=True):
    publish_id: Id  # the replacing publish; its record names what it replaces


class EdgeMoved(Base, frozen=True, kw_only=True):
    moved: tuple[str, ...]  # edge names now assigned to the publish


# --- edge -> token service ------------------------------------------------------------------


Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# Finite and non-negative: an upper bound also refuses inf (JSON has no NaN).
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=100 * 365 * 86400.0)]  # an age, a span
Millis = Annotated[float, msgspec.Meta(ge=0.0, le=86400_000.0)]  # a latency
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1e12)]  # per second


class Traffic(Base, frozen=True, kw_only=True):
    """Inference requests the edge answered over ``interval_s`` (the time since its last
    heartbeat): health checks, metrics and status are not counted."""

    interval_s: Seconds
    requests: Count = 0
    errors: Count = 0  # answered 4xx or 5xx
    rate_per_s: Rate = 0.0  # requests / interval_s
    # from a fixed log-spaced histogram (edge_agent/metrics.py ``Window``): the bucket's
    # upper bound, so within ~10 % above the true value; None with no requests
    p50_ms: Millis | None = None
    p95_ms: Millis | None = None


class LogReport(Base, frozen=True, kw_only=True):
    """The edge's local inference log, as the edge sees it now."""

    backlog_rows: Count = 0  # rows (and gap-line counts) Ops has not acknowledged
    backlog_bytes: Count = 0  # bytes the log's file holds in use (the unsent lines)
    oldest_unsent_age_s: Seconds | None = None  # since the oldest unsent row was logged
    last_ack_age_s: Seconds | None = None  # since Ops last acknowledged a page (this run)


class SwapFailed(Base, frozen=True, kw_only=True):
    """The edge tried to serve its assignment and could not (it keeps retrying)."""

    publish_id: Id
    reason: ShortText
    attempts: Count = 1
    for_s: Seconds = 0.0  # since the first failed attempt for this publish


class Heartbeat(Base, frozen=True, kw_only=True):
    v: int = 1
    status: ShortText = "serving"
    running_publish_id: Id | None = None
    running_version: ShortText | None = None
    agent_version: ShortText = ""
    backlog: Count | None = None
    # issue 12 on (older agents send none of these)
    running_for_s: Seconds | None = None  # since it started serving what it runs
    traffic: Traffic | None = None
    log: LogReport | None = None
    failed: SwapFailed | None = None


class LogSeen(Base, frozen=True, kw_only=True):
    """``LogReport`` with its ages made times (the token service's clock)."""

    backlog_rows: int = 0
    backlog_bytes: int = 0
    oldest_unsent_at: datetime | None = None
    last_ack_at: datetime | None = None


class SwapFailedSeen(Base, frozen=True, kw_only=True):
    """``SwapFailed`` with its age made a time (the token service's clock)."""

    publish_id: int
    reason: str
    attempts: int = 1
    since: datetime


class HeartbeatReply(Base, frozen=True, kw_only=True):
    assignment: Assignment
    credential_expires_at: datetime | None


class RenewRequest(Base, frozen=True, kw_only=True):
    v: int = 1


class RenewReply(Base, frozen=True, kw_only=True):
    credential_expires_at: datetime


# --- token service -> edge (its control subject) -----------------------------------------------


class RunPipeline(Base, frozen=True, kw_only=True, tag="run"):
    assignment: Assignment


class Revoked(Base, frozen=True, kw_only=True, tag="revoked"):
    reason: ShortText = "removed"


Control = RunPipeline | Revoked
