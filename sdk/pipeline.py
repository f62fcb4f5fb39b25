"""``Pipeline``: steps held by the SDK until ``publish()`` saves them as a version."""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from edgepub.shared import subjects
from edgepub.shared.edge_messages import EdgeInfo, EdgeListRequest, EdgeMoved, EdgeMoveRequest
from edgepub.shared.engine_config import EngineConfig
from edgepub.shared.errors import (
    EmptyPipelineError,
    InvalidRequestError,
    PublishFailedError,
    ServiceUnavailableError,
)
from edgepub.shared.schemas import (
    ModelRef,
    PipelineRecord,
    PublishCreateRequest,
    PublishListRequest,
    PublishRecord,
)
from edgepub.shared.schemas import (
    PublishList as PublishListReply,
)

from .deployment_config import default_engine_config
from .edge import EdgeList, fetch_edges, make_edges, publish_records
from .model import Model
from .progress import PublishProgress
from .publish import PipelinePublish, PublishList

if TYPE_CHECKING:
    from .client import Client

log = structlog.get_logger("edgepub.sdk")

PUBLISH_TIMEOUT_S = 600.0
MOVE_RETRY_S = 5.0  # the token service also moves edges itself when it sees the publish


class Pipeline:
    def __init__(self, client: Client, record: PipelineRecord) -> None:
        self._client = client
        self._record = record
        self._steps: list[Model] = []

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def id(self) -> int:
        return self._record.id

    def steps(self) -> list[Model]:
        return list(self._steps)

    def add_model_step(self, model: Model) -> Pipeline:
        if not isinstance(model, Model):
            raise InvalidRequestError(
                "add_model_step takes the Model that upload_model returned, "
                f"not {type(model).__name__}"
            )
        self._steps.append(model)
        return self

    def clear(self) -> Pipeline:
        self._steps.clear()
        return self

    def publish(
        self,
        deployment_config: dict[str, Any] | None = None,
        replaces: Sequence[PipelinePublish | int] | None = None,
        *,
        timeout: float = PUBLISH_TIMEOUT_S,
        progress: bool = True,
    ) -> PipelinePublish:
        """Save the steps as a pipeline version (a new one only if they changed), publish it,
        show progress while pending, and return the publish once ``Published``.
        Raises PublishFailedError when it ends in ``Error``."""
        if not self._steps:
            raise EmptyPipelineError(
                f"pipeline {self.name!r} has no steps; add_model_step(model) before publish()"
            )
        request = PublishCreateRequest(
            request_id=str(uuid.uuid4()),
            pipeline_name=self.name,
            steps=tuple(ModelRef(name=m.name, version=m.version) for m in self._steps),
            engine_config=EngineConfig.from_dict(deployment_config or default_engine_config()),
            replaces=tuple(_publish_ids(replaces or ())),
        )
        record = self._client._run(
            self._client._session.call(
                subjects.VERB_PUBLISH_CREATE, request, PublishRecord, retry_for=30.0
            )
        )
        shown = PublishProgress(timeout, enabled=progress)
        shown.start()
        final = self._client._run(
            self._client._session.watch_publish(record.id, timeout, shown.update, shown.tick)
        )
        if final.status == "Error":
            raise PublishFailedError(
                f"publish {final.id} of pipeline {self.name!r} failed: {final.error}"
            )
        if not final.replaces:
            return PipelinePublish(final, self._client, ())
        return PipelinePublish(final, self._client, self._move_edges(final.id))

    def _move_edges(self, publish_id: int) -> tuple[EdgeInfo, ...] | None:
        """Move the replaced publishes' edges onto ``publish_id`` now, so ``list_edges()``
        shows them there at once (idempotent: the token service does it too, from the
        publish's events, so an unanswered move is not an error), and read them."""
        client = self._client
        try:
            client._run(
                client._session.call(
                    subjects.VERB_EDGE_MOVE,
                    EdgeMoveRequest(publish_id=publish_id),
                    EdgeMoved,
                    retry_for=MOVE_RETRY_S,
                )
            )
        except ServiceUnavailableError as exc:
            log.warning("edges_not_moved_yet", publish_id=publish_id, error=exc.message)
            return None
        return fetch_edges(client, EdgeListRequest(publish_id=publish_id), best_effort=True)

    def publishes(self) -> PublishList:
        """The pipeline's publishes, each with the edges that should run it (read once for
        the pipeline; left off when no token service answers)."""
        reply = self._client._call(
            subjects.VERB_PUBLISH_LIST,
            PublishListRequest(pipeline_name=self.name),
            PublishListReply,
        )
        edges = fetch_edges(
            self._client, EdgeListRequest(pipeline_name=self.name), best_effort=True
        )
        by_publish: dict[int, list[EdgeInfo]] = {r.id: [] for r in reply.publishes}
        for edge in edges or ():
            by_publish.setdefault(edge.publish_id, []).append(edge)
        return PublishList(
            PipelinePublish(r, self._client, None if edges is None else by_publish[r.id])
            for r in reply.publishes
        )

    def list_edges(self, *, include_removed: bool = False) -> EdgeList:
        """The edges of this pipeline's publishes, each with the publish it should run;
        ``include_removed`` adds the removed ones still on record (``revoked``)."""
        request = EdgeListRequest(pipeline_name=self.name, include_removed=include_removed)
        infos = fetch_edges(self._client, request) or ()
        if not infos:
            return EdgeList()
        reply = self._client._call(
            subjects.VERB_PUBLISH_LIST,
            PublishListRequest(pipeline_name=self.name),
            PublishListReply,
        )
        return make_edges(infos, publish_records(self._client, infos, reply.publishes))

    def logs(
        self,
        limit: int | None = None,
        start_datetime: datetime | None = None,
        end_datetime: datetime | None = None,
        valid: bool | None = None,
        dataset: Sequence[str] | str | None = None,
        dataset_exclude: Sequence[str] | str | None = None,
        dataset_separator: str | None = None,
        arrow: bool = False,
        partition: str | None = None,
    ) -> Any:
        """The pipeline's inference rows at Ops, newest first: the newest ``limit`` (100)
        without dates; with both dates the rows with ``start <= time < end`` (at most
        ``limit``). A pandas DataFrame, or a pyarrow Table with ``arrow=True``. ``dataset``
        picks column groups or columns (default time, in, out, anomaly; ``"metadata"`` adds
        metadata.*); ``partition`` reads one edge's rows. Warns when more rows exist than
        returned, and when the edges counted rows as lost (gap records)."""
        from .log_reader import read_logs, warn_about

        read = read_logs(
            self._client,
            self.name,
            limit=limit,
            start_datetime=start_datetime,
            end_datetime=end_datetime,
            valid=valid,
            dataset=dataset,
            dataset_exclude=dataset_exclude,
            dataset_separator=dataset_separator,
            partition=partition,
        )
        warn_about(read)
        return read.table if arrow else read.table.to_pandas()

    def __repr__(self) -> str:
        steps = ", ".join(m.name for m in self._steps) or "(none)"
        return f"Pipeline(name={self.name!r}, id={self.id}, steps=[{steps}])"

    def _repr_html_(self) -> str:
        rows = [
            ("name", self.name),
            ("created", str(self._record.created_at)),
            ("steps", ", ".join(m.name for m in self._steps)),
        ]
        body = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
        )
        return f"<table>{body}</table>"


def _publish_ids(replaces: Iterable[PipelinePublish | int]) -> list[int]:
    ids = []
    for item in replaces:
        if isinstance(item, PipelinePublish):
            ids.append(item.id)
        elif isinstance(item, int):
            ids.append(item)
        else:
            raise InvalidRequestError(
                f"replaces takes publishes or publish ids, not {type(item).__name__}"
            )
    return ids
