"""``Edge`` and ``EdgeList``: edge locations as ``list_edges`` returns them (SDK-COMPAT 10),
with what a fleet operator needs (connection, last seen, credential, running version).

An edge is an ``EdgeInfo`` from the token service plus, when known, the publish it should
run: its Docker/Podman/Helm commands need the publish's engine and chart. The bundle shown
is the one ``add_edge`` returned (with the join token, shown once) when this object has it,
else the edge's bundle with ``JOIN_TOKEN=omitted_for_replace``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from edgepub.shared import subjects
from edgepub.shared.edge_messages import (
    ConnectionStatus,
    CredentialState,
    EdgeInfo,
    EdgeListRequest,
)
from edgepub.shared.edge_messages import EdgeList as EdgeListReply
from edgepub.shared.errors import NotFoundError, ServiceUnavailableError
from edgepub.shared.schemas import PublishGetRequest, PublishRecord

from . import edge_display
from .commands import docker_run_command, helm_install_command, podman_run_command

if TYPE_CHECKING:
    from .client import Client

log = structlog.get_logger("edgepub.sdk")

__all__ = ["Edge", "EdgeList", "fetch_edges", "is_upgrade", "make_edges", "publish_records"]


def is_upgrade(record: PublishRecord, fresh: bool) -> bool:
    """Whether an edge of ``record`` is shown ``helm upgrade`` rather than ``helm install``:
    an edge of a publish that replaces others already runs a replaced pipeline, so it is
    upgraded in place (the seed's replace example); an edge whose bundle still carries its
    join token (``fresh``, just added) has never been installed."""
    return bool(record.replaces) and not fresh


def _unavailable(record: PublishRecord | None, what: str) -> str:
    if record is None:
        return f"(no {what}: the edge's publish could not be read)"
    return f"(no {what} until publish {record.id} is Published)"


class Edge:
    """One edge location. ``info`` is the token service's view; the rest are its fields."""

    def __init__(
        self, info: EdgeInfo, publish: PublishRecord | None = None, bundle: str | None = None
    ) -> None:
        self._info = info
        self._publish = publish
        self._fresh = bundle is not None
        self._bundle = bundle if bundle is not None else info.bundle

    @property
    def info(self) -> EdgeInfo:
        return self._info

    @property
    def publish(self) -> PublishRecord | None:
        """The publish it should run, when it was read with the edge."""
        return self._publish

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def tags(self) -> list[str]:
        return list(self._info.tags)

    @property
    def cpus(self) -> float:
        return self._info.cpus

    @property
    def memory(self) -> str:
        return self._info.memory

    @property
    def created_at(self) -> datetime:
        return self._info.created_at

    @property
    def created_on_version(self) -> str:
        return self._info.created_on_version

    @property
    def should_run_publish(self) -> int:
        return self._info.publish_id

    @property
    def spiffe_id(self) -> str:
        return self._info.spiffe_id

    @property
    def pipeline_name(self) -> str:
        return self._info.pipeline_name

    @property
    def pipeline_version_id(self) -> int:
        return self._info.pipeline_version_id

    @property
    def pipeline_version_name(self) -> str:
        return self._info.pipeline_version_name

    @property
    def pipeline_url(self) -> str:
        return self._info.pipeline_url

    @property
    def workspace_id(self) -> int:
        return self._info.workspace_id

    @property
    def workspace_name(self) -> str:
        return self._info.workspace_name

    @property
    def bundle(self) -> str:
        return self._bundle

    # --- the fleet's view -------------------------------------------------------------
    @property
    def last_seen(self) -> datetime | None:
        return self._info.last_seen

    @property
    def connection(self) -> ConnectionStatus:
        return self._info.connection

    @property
    def offline_after_s(self) -> float:
        return self._info.offline_after_s

    @property
    def credential_state(self) -> CredentialState:
        return self._info.credential_state

    @property
    def credential_expires_at(self) -> datetime | None:
        return self._info.credential_expires_at

    @property
    def revoked_at(self) -> datetime | None:
        """When ``remove_edge`` revoked it (``list_edges(include_removed=True)``), else None."""
        return self._info.revoked_at

    @property
    def running_version(self) -> str | None:
        return self._info.running_version

    @property
    def running_publish_id(self) -> int | None:
        return self._info.running_publish_id

    @property
    def agent_version(self) -> str | None:
        return self._info.agent_version

    @property
    def status(self) -> str | None:
        return self._info.status

    @property
    def backlog(self) -> int | None:
        return self._info.backlog

    # --- commands (the same strings the publish display shows for this edge) -------------
    def _run(self, podman: bool) -> str:
        record = self._publish
        pipeline_url = self._info.pipeline_url or (record.pipeline_url if record else None)
        if record is None or not record.engine_url or not pipeline_url:
            return _unavailable(record, "run command")
        render = podman_run_command if podman else docker_run_command
        return render(
            pipeline_url=pipeline_url,
            engine_url=record.engine_url,
            engine_config=record.engine_config.as_dict(),
            edge_bundle=self._bundle,
        )

    @property
    def docker_run(self) -> str:
        return self._run(podman=False)

    @property
    def podman_run(self) -> str:
        return self._run(podman=True)

    @property
    def helm_install(self) -> str:
        record = self._publish
        if record is None or record.helm is None:
            return _unavailable(record, "helm command")
        return helm_install_command(
            chart_url=record.helm.chart,
            chart_version=record.helm.version,
            helm_values=record.helm.values,
            edge_bundle=self._bundle,
            upgrade=is_upgrade(record, self._fresh),
        )

    def __repr__(self) -> str:
        return edge_display.edges_text([self._info], datetime.now(UTC))

    def _repr_html_(self) -> str:
        return edge_display.edges_html([self._info], datetime.now(UTC))


class EdgeList(list[Edge]):
    """A list of edges that shows itself as a table, ``(No Edges)`` when empty."""

    def __repr__(self) -> str:
        return edge_display.edges_text([e.info for e in self], datetime.now(UTC))

    def _repr_html_(self) -> str:
        return edge_display.edges_html([e.info for e in self], datetime.now(UTC))


def make_edges(
    infos: Iterable[EdgeInfo],
    records: Mapping[int, PublishRecord],
    bundles: Mapping[str, str] | None = None,
) -> EdgeList:
    """Edges with their publishes attached, and the full bundle of any just added (never
    on a removed edge's record: a bundle is known by the name, which it no longer holds)."""
    bundles = bundles or {}
    return EdgeList(
        Edge(
            info,
            records.get(info.publish_id),
            None if info.credential_state == "revoked" else bundles.get(info.name),
        )
        for info in infos
    )


# --- the shell: requests through the client --------------------------------------------------


def fetch_edges(
    client: Client, request: EdgeListRequest, *, best_effort: bool = False
) -> tuple[EdgeInfo, ...] | None:
    """The token service's list. ``best_effort`` (a publish's display): ask once and give
    None when no token service answers, so publishes show without their edges."""
    if not best_effort:
        return client._call(subjects.VERB_EDGE_LIST, request, EdgeListReply).edges
    try:
        reply = client._run(
            client._session.call(subjects.VERB_EDGE_LIST, request, EdgeListReply, retry_for=0.0)
        )
    except ServiceUnavailableError as exc:
        log.debug("edges_unavailable", error=exc.message)
        return None
    return reply.edges


def publish_records(
    client: Client, infos: Sequence[EdgeInfo], known: Iterable[PublishRecord] = ()
) -> dict[int, PublishRecord]:
    """The publishes ``infos`` should run, by id: ``known`` ones, the rest read once each."""
    records = {r.id: r for r in known}
    for publish_id in dict.fromkeys(i.publish_id for i in infos):
        if publish_id in records:
            continue
        try:
            records[publish_id] = client._call(
                subjects.VERB_PUBLISH_GET, PublishGetRequest(id=publish_id), PublishRecord
            )
        except NotFoundError:
            continue  # its commands say the publish could not be read
    return records
