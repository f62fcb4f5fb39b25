"""``PipelinePublish``: a publish as the SDK shows it, with the seed's attribute names, and
the edges that run it (``add_edge``, ``remove_edge``, ``list_edges``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from edgepub.shared import subjects
from edgepub.shared.edge_messages import EdgeAdded, EdgeAddRequest, EdgeInfo, EdgeListRequest
from edgepub.shared.errors import InvalidRequestError
from edgepub.shared.names import check_name
from edgepub.shared.schemas import PublishRecord

from . import display
from .edge import EdgeList, fetch_edges, is_upgrade, make_edges

if TYPE_CHECKING:
    from .client import Client


class PipelinePublish:
    """A publish. ``edges``: the edges that should run it, when they were read with it
    (None: not read); ``bundles``: full bundles (with their join tokens) of edges just added
    through this object, shown instead of the token-less ones."""

    def __init__(
        self,
        record: PublishRecord,
        client: Client | None = None,
        edges: Iterable[EdgeInfo] | None = None,
        bundles: Mapping[str, str] | None = None,
    ) -> None:
        self._record = record
        self._client = client
        self._edges = None if edges is None else tuple(edges)
        self._bundles = dict(bundles or {})

    @property
    def record(self) -> PublishRecord:
        return self._record

    # The seed's fields, one property each so editors and mypy see them.
    @property
    def id(self) -> int:
        return self._record.id

    @property
    def pipeline_name(self) -> str:
        return self._record.pipeline_name

    @property
    def pipeline_version_id(self) -> int:
        return self._record.pipeline_version_id

    @property
    def pipeline_version_name(self) -> str:
        return self._record.pipeline_version_name

    @property
    def status(self) -> str:
        return self._record.status

    @property
    def engine_url(self) -> str | None:
        return self._record.engine_url

    @property
    def pipeline_url(self) -> str | None:
        return self._record.pipeline_url

    @property
    def helm(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self._record.helm) if self._record.helm else {}

    @property
    def docker_run_variables(self) -> dict[str, str]:
        return dict(self._record.docker_run_variables)

    @property
    def edge_bundles(self) -> dict[str, str]:
        """Edge name -> EDGE_BUNDLE for the edges read with this publish: the full bundle
        of one just added by ``add_edge``, the token-less one of the others."""
        return {e.name: self._bundles.get(e.name, e.bundle) for e in self._edges or ()}

    @property
    def edges(self) -> EdgeList | None:
        """The edges read with this publish (None when they were not read)."""
        if self._edges is None:
            return None
        return make_edges(self._edges, {self.id: self._record}, self._bundles)

    @property
    def engine_config(self) -> dict[str, Any]:
        return self._record.engine_config.as_dict()

    @property
    def user_images(self) -> list[str]:
        return list(self._record.user_images)

    @property
    def created_by(self) -> str:
        return self._record.created_by

    @property
    def created_by_email(self) -> str:
        return self._record.created_by

    @property
    def created_at(self) -> datetime:
        return self._record.created_at

    @property
    def updated_at(self) -> datetime:
        return self._record.updated_at

    @property
    def created_on_version(self) -> str:
        return self._record.created_on_version

    @property
    def replaces(self) -> list[int]:
        return list(self._record.replaces)

    @property
    def error(self) -> str | None:
        return self._record.error

    @property
    def workspace_id(self) -> int:
        return self._record.workspace_id

    @property
    def workspace_name(self) -> str:
        return self._record.workspace_name

    # --- edges ------------------------------------------------------------------------
    def _need_client(self, verb: str) -> Client:
        if self._client is None:
            raise InvalidRequestError(
                f"publish {self.id} was made without a client, so {verb}() cannot reach the "
                f"bus; read it with client.get_publish({self.id})"
            )
        return self._client

    def add_edge(self, name: str, tags: Sequence[str] | None = None) -> PipelinePublish:
        """Add edge location ``name`` (unique across the instance) to this publish and
        return a new publish whose ``docker_run_variables["EDGE_BUNDLE"]`` and
        ``edge_bundles[name]`` hold its bundle: the one time its join token is shown.
        Raises EdgeNameTakenError for a name in use, PublishNotReadyError unless
        Published."""
        client = self._need_client("add_edge")
        request = EdgeAddRequest(
            publish_id=self.id, name=check_name("edge", name), tags=_tags(tags)
        )
        added = client._call(subjects.VERB_EDGE_ADD, request, EdgeAdded)
        listed = fetch_edges(client, EdgeListRequest(publish_id=self.id), best_effort=True)
        return self._with_added(added, self._edges if listed is None else listed)

    def _with_added(self, added: EdgeAdded, others: Iterable[EdgeInfo] | None) -> PipelinePublish:
        """This publish with ``added`` among its edges and its bundle in the variables."""
        edges = [e for e in others or () if e.name != added.edge.name]
        edges.append(added.edge)
        variables = {**self._record.docker_run_variables, "EDGE_BUNDLE": added.bundle}
        record = msgspec.structs.replace(self._record, docker_run_variables=variables)
        bundles = {**self._bundles, added.edge.name: added.bundle}
        return PipelinePublish(record, self._client, edges, bundles)

    def remove_edge(self, name: str) -> None:
        """Remove edge ``name``: its credential stops working at once and the name is free."""
        self._need_client("remove_edge").remove_edge(name)

    def list_edges(self, *, include_removed: bool = False) -> EdgeList:
        """The edges that should run this publish; ``include_removed`` adds the removed ones
        still on record (``revoked``)."""
        client = self._need_client("list_edges")
        request = EdgeListRequest(publish_id=self.id, include_removed=include_removed)
        infos = fetch_edges(client, request) or ()
        return make_edges(infos, {self.id: self._record}, self._bundles)

    # --- display ------------------------------------------------------------------------
    def _upgrades(self) -> set[str]:
        return {n for n in self.edge_bundles if is_upgrade(self._record, n in self._bundles)}

    def __repr__(self) -> str:
        return display.publish_text(self._record, self.edge_bundles, upgrades=self._upgrades())

    def _repr_html_(self) -> str:
        return display.publish_html(self._record, self.edge_bundles, upgrades=self._upgrades())


class PublishList(list[PipelinePublish]):
    """A list of publishes that shows itself as a table."""

    def __repr__(self) -> str:
        return display.publishes_text([p.record for p in self])

    def _repr_html_(self) -> str:
        return display.publishes_html([p.record for p in self])


def _tags(tags: Sequence[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise InvalidRequestError(f"tags takes a list of strings, e.g. ['store-12'], not {tags!r}")
    return tuple(tags)
