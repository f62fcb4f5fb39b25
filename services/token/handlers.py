"""What the token service does with each request: edges added, removed, listed and moved
by SDK users; heartbeats and renewals from edges."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
import structlog
from nats.aio.client import Client as NATS

from edgepub.shared import subjects
from edgepub.shared.bundle import EdgeBundle, encode_bundle
from edgepub.shared.bundle import join_token_sha256 as token_sha256
from edgepub.shared.edge_messages import (
    Assignment,
    Control,
    EdgeAdded,
    EdgeAddRequest,
    EdgeInfo,
    EdgeList,
    EdgeListRequest,
    EdgeMoved,
    EdgeMoveRequest,
    EdgeRecord,
    EdgeRemoved,
    EdgeRemoveRequest,
    EdgeSeen,
    Heartbeat,
    HeartbeatReply,
    LogSeen,
    RenewReply,
    RenewRequest,
    Revoked,
    RunPipeline,
    SwapFailedSeen,
)
from edgepub.shared.engine_config import EngineConfig, cpu_cores
from edgepub.shared.errors import (
    EdgeNameTakenError,
    NotAuthorizedError,
    NotFoundError,
    PublishNotReadyError,
)
from edgepub.shared.schemas import PublishRecord, encode, utcnow
from edgepub.shared.version import VERSION

from .decisions import edge_info, renewed
from .kick import kick_edge
from .settings import TokenSettings
from .state import Conflict, EdgeState, record_key, seen_key

log = structlog.get_logger("edgepub.token")


def assignment_of(publish: PublishRecord) -> Assignment:
    if publish.status != "Published" or not publish.pipeline_url:
        raise PublishNotReadyError(
            f"publish {publish.id} is {publish.status}: edges run Published publishes only; "
            "wait for publish() to return"
        )
    return Assignment(
        publish_id=publish.id,
        pipeline_name=publish.pipeline_name,
        pipeline_version_id=publish.pipeline_version_id,
        pipeline_version_name=publish.pipeline_version_name,
        pipeline_url=publish.pipeline_url,
        workspace_id=publish.workspace_id,
    )


def resources_of(config: EngineConfig) -> tuple[float, str]:
    """(cpus, memory) an edge of this publish is given, as list_edges shows them."""
    engine = config.engine
    cpus = cpu_cores(engine.cpu) if engine and engine.cpu is not None else 1.0
    limits = engine.resources.limits if engine and engine.resources else None
    return cpus, (limits.memory if limits and limits.memory else "1Gi")


def _ago(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else now - timedelta(seconds=seconds)


def seen_of(beat: Heartbeat, now: datetime) -> EdgeSeen:
    """What ``seen.<name>`` keeps of a heartbeat received at ``now`` (this service's
    clock): the edge reports ages, never its own clock's times, so a skewed edge clock
    moves nothing the dashboard shows."""
    log_seen = failed = None
    if beat.log is not None:
        report = beat.log
        log_seen = LogSeen(
            backlog_rows=report.backlog_rows,
            backlog_bytes=report.backlog_bytes,
            oldest_unsent_at=_ago(now, report.oldest_unsent_age_s),
            last_ack_at=_ago(now, report.last_ack_age_s),
        )
    if beat.failed is not None:
        f = beat.failed
        failed = SwapFailedSeen(
            publish_id=f.publish_id,
            reason=f.reason,
            attempts=f.attempts,
            since=now - timedelta(seconds=f.for_s),
        )
    return EdgeSeen(
        at=now,
        status=beat.status,
        running_publish_id=beat.running_publish_id,
        running_version=beat.running_version,
        agent_version=beat.agent_version,
        backlog=beat.backlog,
        running_since=_ago(now, beat.running_for_s),
        traffic=beat.traffic,
        log=log_seen,
        failed=failed,
    )


@dataclass
class TokenService:
    nc: NATS
    sys_nc: NATS | None  # the system-account connection that kicks; None: kick skipped
    state: EdgeState
    settings: TokenSettings
    clock: Callable[[], datetime] = utcnow  # the broker's time (__main__ gives a ServerClock)

    def bundle(self, record: EdgeRecord, join_token: str | None) -> str:
        return encode_bundle(
            EdgeBundle(
                bundle_version=1,
                edge_name=record.name,
                join_token=join_token,
                opscenter_host=self.settings.opscenter_host,
                pipeline_url=record.assignment.pipeline_url,
                workspace_id=record.workspace_id,
            )
        )

    def info(self, record: EdgeRecord, seen: EdgeSeen | None) -> EdgeInfo:
        return edge_info(record, seen, self.clock(), self.settings, self.bundle(record, None))

    # --- SDK users ---------------------------------------------------------------------------

    async def add_edge(self, user: str, req: EdgeAddRequest) -> EdgeAdded:
        publish = await self.state.publish(req.publish_id)
        if publish is None:
            raise NotFoundError(f"publish {req.publish_id} does not exist")
        assignment = assignment_of(publish)
        cpus, memory = resources_of(publish.engine_config)
        token = str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
        now = self.clock()
        record = EdgeRecord(
            id=str(uuid.uuid4()),
            name=req.name,
            tags=req.tags,
            workspace_id=publish.workspace_id,
            workspace_name=publish.workspace_name,
            assignment=assignment,
            cpus=cpus,
            memory=memory,
            join_token_sha256=token_sha256(token),
            join_token_expires_at=now + timedelta(seconds=self.settings.join_token_ttl_s),
            assigned_at=now,
            created_at=now,
            created_by=user,
            created_on_version=VERSION,
        )
        await self._claim_name(record)
        log.info("edge_added", edge=req.name, publish_id=publish.id, pipeline=publish.pipeline_name)
        return EdgeAdded(edge=self.info(record, None), bundle=self.bundle(record, token))

    async def _claim_name(self, record: EdgeRecord) -> None:
        """Create ``edge.<name>``; a revoked tombstone gives its name up, anything else keeps it."""
        key = record_key(record.name)
        while True:
            got = await self.state.records.get(key)
            try:
                if got is None:
                    await self.state.records.create(key, record)
                elif got[0].state == "revoked":
                    await self.state.records.update(key, record, revision=got[1])
                else:
                    held = got[0].assignment
                    raise EdgeNameTakenError(
                        f"edge {record.name!r} already exists (publish {held.publish_id} of "
                        f"pipeline {held.pipeline_name!r}); edge names are unique: choose "
                        f"another name or remove_edge({record.name!r}) to free it"
                    )
                return
            except Conflict:
                continue

    async def remove_edge(self, user: str, req: EdgeRemoveRequest) -> EdgeRemoved:
        while True:
            got = await self.state.record(req.name)
            if got is None or got[0].state == "revoked":
                raise NotFoundError(
                    f"no edge named {req.name!r}; list_edges() shows the edges there are"
                )
            record, rev = got
            tombstone = msgspec.structs.replace(
                record, state="revoked", revoked_at=self.clock(), public_key=None
            )
            try:
                await self.state.records.update(record_key(req.name), tombstone, revision=rev)
                break
            except Conflict:
                continue
        await self._tell(req.name, Revoked(reason="removed"))
        kicked = 0
        if self.sys_nc is not None:
            kicked = await kick_edge(self.sys_nc, req.name, self.settings.kick_quiet_s)
        log.info("edge_removed", edge=req.name, by=user, disconnected=kicked)
        return EdgeRemoved(name=req.name, disconnected=kicked)

    async def list_edges(self, user: str, req: EdgeListRequest) -> EdgeList:
        seen = await self.state.all_seen()
        out = []
        async for record in self.state.all_records():
            a = record.assignment
            if record.state == "revoked" and not req.include_removed:
                continue
            if req.pipeline_name is not None and a.pipeline_name != req.pipeline_name:
                continue
            if req.publish_id is not None and a.publish_id != req.publish_id:
                continue
            out.append(self.info(record, seen.get(record.name)))
        return EdgeList(edges=tuple(sorted(out, key=lambda e: (e.created_at, e.name))))

    async def move_edges(self, user: str, req: EdgeMoveRequest) -> EdgeMoved:
        publish = await self.state.publish(req.publish_id)
        if publish is None:
            raise NotFoundError(f"publish {req.publish_id} does not exist")
        return EdgeMoved(moved=tuple(await self.move_to(publish)))

    async def move_to(self, publish: PublishRecord) -> list[str]:
        """Move the edges of the publishes ``publish`` replaces onto it and tell each one.
        Idempotent: an edge already on it, or on another publish, is left alone."""
        if not publish.replaces:
            return []
        assignment = assignment_of(publish)
        replaced = set(publish.replaces)
        moved = []
        async for record in self.state.all_records():
            if record.state == "revoked" or record.assignment.publish_id not in replaced:
                continue
            if await self._move_one(record.name, replaced, assignment):
                moved.append(record.name)
        for name in moved:
            await self._tell(name, RunPipeline(assignment=assignment))
        if moved:
            log.info("edges_moved", publish_id=publish.id, edges=moved, replaces=publish.replaces)
        return moved

    async def _move_one(self, name: str, replaced: set[int], assignment: Assignment) -> bool:
        while True:
            got = await self.state.record(name)
            if got is None or got[0].assignment.publish_id not in replaced:
                return False
            record, rev = got
            changed = msgspec.structs.replace(
                record, assignment=assignment, assigned_at=self.clock()
            )
            try:
                await self.state.records.update(record_key(name), changed, revision=rev)
                return True
            except Conflict:
                continue

    # --- edges -------------------------------------------------------------------------------

    async def _tell(self, edge: str, notice: Control) -> None:
        """Push ``notice`` to one edge; the header tells it apart from a reply that another
        edge pointed at its control subject (answered inside the edge account, never Ops)."""
        await self.nc.publish(
            subjects.control(edge), encode(notice), headers={subjects.HEADER_CONTROL: edge}
        )

    async def _joined(self, edge: str) -> tuple[EdgeRecord, int]:
        got = await self.state.record(edge)
        if got is None or got[0].state != "joined":
            raise NotAuthorizedError(f"edge {edge!r} is not a joined edge")
        return got

    async def heartbeat(self, edge: str, beat: Heartbeat) -> HeartbeatReply:
        record, _ = await self._joined(edge)
        seen = seen_of(beat, self.clock())
        await self.state.seen.put(seen_key(edge), seen)
        return HeartbeatReply(
            assignment=record.assignment, credential_expires_at=record.credential_expires_at
        )

    async def renew(self, edge: str, req: RenewRequest) -> RenewReply:
        while True:
            record, rev = await self._joined(edge)
            changed = renewed(record, self.clock(), self.settings)
            if changed is None or changed.credential_expires_at is None:
                raise NotAuthorizedError(f"edge {edge!r}: credential expired; it cannot renew")
            try:
                await self.state.records.update(record_key(edge), changed, revision=rev)
            except Conflict:
                continue
            log.info("credential_renewed", edge=edge, expires_at=changed.credential_expires_at)
            return RenewReply(credential_expires_at=changed.credential_expires_at)
