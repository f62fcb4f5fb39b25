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
    connection: ConnectionStatus
    offline_after_s: float
    last_seen: datetime | None
    running_publish_id: int | None
    running_version: str | None
    agent_version: str | None
    status: str | None
    backlog: int | None
    # EDGE_BUNDLE with JOIN_TOKEN=omitted_for_replace (as the seed shows replaced
    # locations): the join token itself is shown once, by add_edge, and never stored.
    bundle: str


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


class Heartbeat(Base, frozen=True, kw_only=True):
    v: int = 1
    status: ShortText = "serving"
    running_publish_id: Id | None = None
    running_version: ShortText | None = None
    agent_version: ShortText = ""
    backlog: Count | None = None


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
