"""Every message and record edgepub puts on the wire or in KV, as msgspec Structs.

Version 1 of each is marked by ``v``; a change that old readers could misread gets a new
``v`` and, for events, a new tag. Encoded as msgpack on the bus and in KV; the pipeline
artifact's config (read by edges and by people) is JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import msgspec


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Values: immutable, keyword-only. Unknown fields are ignored so newer writers can add."""


# --- models and pipelines ----------------------------------------------------------------

Dim = int | str | None


class TensorSpec(Base, frozen=True, kw_only=True):
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "string", ...
    shape: tuple[Dim, ...]  # None or a symbolic name for a free dimension


class ModelVersion(Base, frozen=True, kw_only=True):
    v: int = 1
    name: str
    version: str  # UUID
    sha256: str  # hex digest of the file
    size: int
    file_name: str
    runtime: str = "onnx"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    created_by: str = ""
    created_at: datetime = msgspec.field(default_factory=utcnow)

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


class PipelineRecord(Base, frozen=True, kw_only=True):
    v: int = 1
    id: int
    name: str
    created_by: str
    created_at: datetime
    latest_version_id: int | None = None


class PipelineVersion(Base, frozen=True, kw_only=True):
    v: int = 1
    id: int
    name: str  # UUID: the pipeline version name the seed shows
    pipeline_name: str
    steps: tuple[ModelVersion, ...]
    steps_key: str  # digest of the steps; equal steps reuse the version
    created_at: datetime


class HelmInfo(Base, frozen=True, kw_only=True):
    reference: str
    chart: str
    version: str
    values: dict[str, Any] = msgspec.field(default_factory=dict)


PublishStatus = Literal["PendingPublish", "Publishing", "Published", "Error"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"Published", "Error"})


class PublishRecord(Base, frozen=True, kw_only=True):
    """A publish, with the seed's field names."""

    v: int = 1
    id: int
    pipeline_name: str
    pipeline_version_id: int
    pipeline_version_name: str
    status: PublishStatus
    engine_url: str | None = None
    pipeline_url: str | None = None
    helm: HelmInfo | None = None
    docker_run_variables: dict[str, str] = msgspec.field(default_factory=dict)
    engine_config: dict[str, Any] = msgspec.field(default_factory=dict)
    user_images: list[str] = msgspec.field(default_factory=list)
    created_by: str = ""
    created_at: datetime = msgspec.field(default_factory=utcnow)
    updated_at: datetime = msgspec.field(default_factory=utcnow)
    created_on_version: str = ""
    replaces: list[int] = msgspec.field(default_factory=list)
    error: str | None = None
    workspace_id: int = 1
    workspace_name: str = "default"
    request_id: str = ""
    pipeline_digest: str | None = None
    chart_digest: str | None = None


# --- SDK/CLI requests (request/reply to the publish service) --------------------------------


class ModelRef(Base, frozen=True, kw_only=True):
    name: str
    version: str


class ModelRegisterRequest(Base, frozen=True, kw_only=True):
    name: str
    sha256: str
    size: int
    file_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class ModelGetRequest(Base, frozen=True, kw_only=True):
    name: str
    version: str | None = None


class PipelineBuildRequest(Base, frozen=True, kw_only=True):
    name: str


class PublishCreateRequest(Base, frozen=True, kw_only=True):
    request_id: str  # re-sending the same id creates nothing twice
    pipeline_name: str
    steps: tuple[ModelRef, ...]
    engine_config: dict[str, Any] = msgspec.field(default_factory=dict)
    replaces: tuple[int, ...] = ()


class PublishGetRequest(Base, frozen=True, kw_only=True):
    id: int


class PublishListRequest(Base, frozen=True, kw_only=True):
    pipeline_name: str


class PublishList(Base, frozen=True, kw_only=True):
    publishes: tuple[PublishRecord, ...]


class ErrorReply(Base, frozen=True, kw_only=True):
    code: str
    message: str


# --- work events between services (tagged union on the work stream) ------------------------


class PublishRequested(Base, frozen=True, kw_only=True, tag="publish.requested"):
    v: int = 1
    publish_id: int
    pipeline_version: PipelineVersion
    engine_config: dict[str, Any]
    requested_at: datetime
    created_on_version: str


class PushStarted(Base, frozen=True, kw_only=True, tag="publish.push_started"):
    v: int = 1
    publish_id: int
    attempt: int


class Pushed(Base, frozen=True, kw_only=True, tag="publish.pushed"):
    v: int = 1
    publish_id: int
    pipeline_url: str
    pipeline_digest: str
    engine_url: str
    helm: HelmInfo
    chart_digest: str


class PushFailed(Base, frozen=True, kw_only=True, tag="publish.push_failed"):
    v: int = 1
    publish_id: int
    code: str
    reason: str


PushOutcome = PushStarted | Pushed | PushFailed


# --- the pipeline artifact's config blob (JSON; read by edges) ------------------------------


class ArtifactStep(Base, frozen=True, kw_only=True):
    model_name: str
    model_version: str
    sha256: str
    size: int
    file_name: str  # the layer's org.opencontainers.image.title
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class PipelineDefinition(Base, frozen=True, kw_only=True):
    v: int = 1
    pipeline_name: str
    pipeline_version: str
    pipeline_version_id: int
    steps: tuple[ArtifactStep, ...]
    engine_config: dict[str, Any]


# --- codecs ---------------------------------------------------------------------------------

msgpack_encoder = msgspec.msgpack.Encoder()
json_encoder = msgspec.json.Encoder(order="sorted")


def encode(obj: msgspec.Struct) -> bytes:
    return msgpack_encoder.encode(obj)


def encode_json(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys): equal content, equal bytes, equal digests."""
    return json_encoder.encode(obj)


T = TypeVar("T")

_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def decoder(kind: type[T]) -> msgspec.msgpack.Decoder[T]:
    """A cached msgpack decoder for ``kind``."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    return dec


def decode(kind: type[T], data: bytes) -> T:
    return decoder(kind).decode(data)


push_outcome_decoder: msgspec.msgpack.Decoder[PushOutcome] = msgspec.msgpack.Decoder(PushOutcome)
definition_decoder = msgspec.json.Decoder(PipelineDefinition)
