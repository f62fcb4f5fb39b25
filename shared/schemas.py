"""Every message and record edgepub puts on the wire or in KV, as msgspec Structs.

Version 1 of each is marked by ``v``; a change that old readers could misread gets a new
``v`` and, for events, a new tag. Encoded as msgpack on the bus and in KV; the pipeline
artifact's config (read by edges and by people) is JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from .dtypes import DType
from .engine_config import EngineConfig


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


# --- what a client may send (the services' boundary) -------------------------------------
# Meta patterns are searched: anchored \A...\Z, never ^...$ ("$" matches before a "\n").

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's limit on one ONNX file (external data is refused)
MAX_FILE_NAME = 255  # the usual file system limit on one name
MAX_TENSORS = 1024  # inputs, and outputs, of one model
MAX_RANK = 32
MAX_DIM = 2**31 - 1
MAX_TENSOR_NAME = 256
MAX_STEPS = 100
MAX_REPLACES = 100
MAX_ID = 2**63 - 1
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"  # no control characters or line breaks

Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{64}\Z")]
Uuid = Annotated[
    str,
    msgspec.Meta(pattern=r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"),
]
# A plain base name: no directory, no "..", no leading dot, no control characters; ".onnx".
FileName = Annotated[
    str,
    msgspec.Meta(
        max_length=MAX_FILE_NAME,
        pattern=rf"\A(?!\.)(?!.*\.\.)(?:(?![/\\]){_PRINTABLE})+\.onnx\Z",
    ),
]
ModelSize = Annotated[int, msgspec.Meta(gt=0, le=MAX_MODEL_BYTES)]
Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
TensorName = Annotated[str, msgspec.Meta(max_length=MAX_TENSOR_NAME, pattern=rf"\A{_PRINTABLE}+\Z")]
CheckedDim = (
    Annotated[int, msgspec.Meta(ge=0, le=MAX_DIM)]
    | Annotated[str, msgspec.Meta(max_length=128, pattern=rf"\A{_PRINTABLE}+\Z")]
    | None
)


class CheckedTensorSpec(TensorSpec, frozen=True, kw_only=True):
    """A TensorSpec as a client declares it: bounded, and a dtype the edge serves. Stored
    (and read back) as a plain TensorSpec, so records written before still decode."""

    name: TensorName
    dtype: DType
    shape: Annotated[tuple[CheckedDim, ...], msgspec.Meta(max_length=MAX_RANK)]


CheckedTensorSpecs = Annotated[tuple[CheckedTensorSpec, ...], msgspec.Meta(max_length=MAX_TENSORS)]


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
    engine_config: EngineConfig = msgspec.field(default_factory=EngineConfig)
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
    version: Uuid


class ModelRegisterRequest(Base, frozen=True, kw_only=True):
    name: str
    sha256: Sha256Hex
    size: ModelSize
    file_name: FileName
    inputs: CheckedTensorSpecs
    outputs: CheckedTensorSpecs


class ModelUploadRequest(Base, frozen=True, kw_only=True):
    """Model bytes for the verified store. Without ``upload``: are they there already?
    With it: verify the entry ``upload`` of the upload area and copy it in."""

    sha256: Sha256Hex
    size: ModelSize
    upload: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class ModelUploadReply(Base, frozen=True, kw_only=True):
    present: bool  # the verified store holds exactly these bytes now


class ModelGetRequest(Base, frozen=True, kw_only=True):
    name: str
    version: Uuid | None = None


class PipelineBuildRequest(Base, frozen=True, kw_only=True):
    name: str


class PublishCreateRequest(Base, frozen=True, kw_only=True):
    request_id: Uuid  # re-sending the same id creates nothing twice
    pipeline_name: str
    steps: Annotated[tuple[ModelRef, ...], msgspec.Meta(max_length=MAX_STEPS)]
    engine_config: EngineConfig = msgspec.field(default_factory=EngineConfig)
    replaces: Annotated[tuple[Id, ...], msgspec.Meta(max_length=MAX_REPLACES)] = ()


class PublishGetRequest(Base, frozen=True, kw_only=True):
    id: Id


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
    engine_config: EngineConfig
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
    # A plain dict (what the publish's config was), not EngineConfig: nothing on the edge
    # acts on it, and an edge must read artifacts pushed before configs were typed.
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
