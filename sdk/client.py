"""``Client``: the synchronous entry point of the SDK."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from edgepub.shared import logs, subjects
from edgepub.shared.edge_messages import EdgeListRequest, EdgeRemoved, EdgeRemoveRequest
from edgepub.shared.errors import InvalidModelError
from edgepub.shared.names import check_name
from edgepub.shared.schemas import (
    ModelGetRequest,
    ModelRegisterRequest,
    ModelVersion,
    PipelineBuildRequest,
    PipelineRecord,
    PublishGetRequest,
    PublishRecord,
    TensorSpec,
)

from . import connection
from ._loop import BackgroundLoop
from .edge import EdgeList, fetch_edges, make_edges, publish_records
from .model import Framework, Model
from .model_file import inspect_onnx, sha256_file
from .pipeline import Pipeline
from .publish import PipelinePublish
from .session import Session

T = TypeVar("T")
Resp = TypeVar("Resp")


class Client:
    """Connects to edgepub's bus.

    With no arguments it finds a running embedded stack (``edgepub up``); set
    ``nats_url``/``user``/``password`` (or EDGEPUB_NATS_URL/USER/PASSWORD) for any other
    deployment. ``auth_type`` and ``request_timeout`` are accepted as Wallaroo's are.
    """

    def __init__(
        self,
        nats_url: str | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        data_dir: str | Path | None = None,
        request_timeout: float = 30.0,
        auth_type: str | None = None,
    ) -> None:
        logs.configure_unless_configured()
        settings = connection.resolve(nats_url, user, password, data_dir)
        self._loop = BackgroundLoop()
        self._session = Session(settings, request_timeout)
        self._run(self._session.nc())  # fail now, with the reason, if the bus is unreachable

    @property
    def user(self) -> str:
        return self._session.user

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def _call(self, verb: str, request: msgspec.Struct, response_type: type[Resp]) -> Resp:
        return self._run(self._session.call(verb, request, response_type))

    def upload_model(
        self,
        name: str,
        path: str | Path,
        framework: Framework | str | None = None,
        input_schema: Any = None,
        output_schema: Any = None,
        **_: Any,
    ) -> Model:
        """Upload an ONNX file as a new version of model ``name`` (identical bytes under the
        same name return the existing version). The file is checked by loading it."""
        check_name("model", name)
        if framework is not None and str(getattr(framework, "value", framework)) != "onnx":
            raise InvalidModelError(f"{path}: framework {framework!r} is not served; use ONNX")
        file = Path(path)
        inputs, outputs = inspect_onnx(file)
        sha, size = sha256_file(file)
        self._run(self._session.put_model_bytes(file, sha, size))
        request = ModelRegisterRequest(
            name=name,
            sha256=sha,
            size=size,
            file_name=f"{name}.onnx",
            inputs=inputs,
            outputs=outputs,
        )
        return Model(self._call(subjects.VERB_MODEL_REGISTER, request, ModelVersion))

    def get_model(self, name: str, version: str | None = None) -> Model:
        """A model version by name (the latest when ``version`` is None)."""
        record = self._call(
            subjects.VERB_MODEL_GET, ModelGetRequest(name=name, version=version), ModelVersion
        )
        return Model(record)

    def build_pipeline(self, name: str) -> Pipeline:
        """The pipeline named ``name``, created if it does not exist yet."""
        check_name("pipeline", name)
        record = self._call(
            subjects.VERB_PIPELINE_BUILD, PipelineBuildRequest(name=name), PipelineRecord
        )
        return Pipeline(self, record)

    def get_publish(self, publish_id: int) -> PipelinePublish:
        """A publish by id, with the edges that should run it (when the token service
        answers)."""
        record = self._call(
            subjects.VERB_PUBLISH_GET, PublishGetRequest(id=publish_id), PublishRecord
        )
        edges = fetch_edges(self, EdgeListRequest(publish_id=publish_id), best_effort=True)
        return PipelinePublish(record, self, edges)

    def remove_edge(self, name: str) -> None:
        """Remove edge ``name``: its credential stops working at once (connected, it is cut
        off) and the name is free for ``add_edge`` again. NotFoundError if no such edge."""
        self._remove_edge(name)

    def _remove_edge(self, name: str) -> EdgeRemoved:
        request = EdgeRemoveRequest(name=check_name("edge", name))
        return self._call(subjects.VERB_EDGE_REMOVE, request, EdgeRemoved)

    def list_edges(
        self,
        pipeline_name: str | None = None,
        publish_id: int | None = None,
        *,
        include_removed: bool = False,
    ) -> EdgeList:
        """Every edge of the instance, or those of one pipeline and/or one publish.
        ``include_removed`` adds the removed ones still on record (``credential_state``
        ``revoked``, with ``revoked_at``); adding a name again replaces its removed record."""
        request = EdgeListRequest(
            pipeline_name=pipeline_name, publish_id=publish_id, include_removed=include_removed
        )
        infos = fetch_edges(self, request) or ()
        return make_edges(infos, publish_records(self, infos))

    def close(self) -> None:
        try:
            self._run(self._session.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Client", "TensorSpec"]
