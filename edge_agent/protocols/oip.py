"""The Open Inference Protocol (KServe v2), with Triton's binary tensor data extension.

With the extension (what ``tritonclient[http]`` sends by default) the body is a JSON header
of ``Inference-Header-Content-Length`` bytes followed by the raw tensors, in input order,
each ``parameters.binary_data_size`` bytes long (BYTES elements as a 4-byte little-endian
length and the bytes). Outputs are returned the same way when asked for with
``parameters.binary_data`` (per output) or ``binary_data_output`` (per request).

A request names each input once; the body is JSON (no ``Content-Type``, or a JSON one) or,
with the header, ``application/octet-stream``. A step of the pipeline is a model with its
own version: the one its metadata and answers report.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from edgepub.shared.schemas import TensorSpec
from edgepub.shared.version import VERSION

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ..runtime import LoadedPipeline
from ..tensors import DTYPES_BY_OIP, OIP_DATATYPES, check_shape, convert, numpy_dtype
from . import pieces

HEADER_LENGTH = b"inference-header-content-length"
PLATFORM = "onnxruntime_onnx"
BINARY = "application/octet-stream"
_JSON_TYPES = frozenset({"", "application/json", "text/json"})


class InputTensor(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    shape: list[int]
    datatype: str
    data: Any = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class RequestedOutput(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class InferRequest(msgspec.Struct, frozen=True, kw_only=True):
    inputs: list[InputTensor]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


_request_decoder = msgspec.json.Decoder(InferRequest)
_encoder = msgspec.json.Encoder()


def check_media_type(media_type: str, header_length: int | None) -> None:
    """JSON, or the binary extension's octet stream with its header length; else a 415."""
    if media_type in _JSON_TYPES or media_type.endswith("+json"):
        return
    if media_type == BINARY and header_length is not None:
        return
    why = (
        f"{BINARY} carries binary tensors and needs Inference-Header-Content-Length"
        if media_type == BINARY
        else f"send 'application/json', or {BINARY!r} with Inference-Header-Content-Length"
    )
    raise UnsupportedMediaType(
        f"Content-Type {media_type!r} is not supported: {why}", field="Content-Type"
    )


def version_of(target: LoadedPipeline) -> str:
    """The version OIP reports: the pipeline's, or for one of its steps that model's own."""
    if target.name == target.pipeline_name:
        return target.version
    return target.models[0].version


def decode(body: bytes, header_length: int | None) -> tuple[InferRequest, memoryview]:
    """The JSON part (validated) and the binary part (possibly empty)."""
    split = _split(body, header_length)
    view = memoryview(body)
    return _checked(_header(view[:split])), view[split:]


def _split(body: bytes, header_length: int | None) -> int:
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length={header_length} does not fit a {len(body)}-byte body",
            field="Inference-Header-Content-Length",
        )
    return len(body) if header_length is None else header_length


def _header(json: bytes | memoryview) -> InferRequest:
    try:
        return _request_decoder.decode(json)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid inference request: {exc}", field="inputs") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", field="body") from None
    except RecursionError:  # msgspec's guard against nesting past the C stack
        raise BadRequest("request body nests JSON too deeply", field="body") from None


def _checked(request: InferRequest) -> InferRequest:
    if not request.inputs:
        raise BadRequest("the request has no inputs", field="inputs")
    seen: set[str] = set()
    for tensor in request.inputs:
        if tensor.name in seen:
            raise BadRequest(f"input {tensor.name!r} is named twice", field=tensor.name)
        seen.add(tensor.name)
    return request


# --- a large JSON body: each input's flat list of numbers a piece at a time ---------------

_DATA = b'"data"'
_VALUE = re.compile(rb"\s*:\s*\[")
_PLACE = "\x00edgepub-data:"  # no client sends a NUL in a "data" string by accident
_NUMBERS: dict[str, Any] = {"BOOL": msgspec.json.Decoder(list[bool]).decode}
_NUMBERS.update(dict.fromkeys(("FP16", "FP32", "FP64"), msgspec.json.Decoder(list[float]).decode))
_NUMBERS.update(
    dict.fromkeys(
        ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"),
        msgspec.json.Decoder(list[int]).decode,
    )
)


def _data_spans(body: bytes, split: int, least: int) -> list[tuple[int, int]]:
    """Where the ``"data": [...]`` flat lists of numbers of at least ``least`` bytes are."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while (at := body.find(_DATA, pos, split)) != -1:
        found = _VALUE.match(body, at + len(_DATA), split)
        if found is None:
            pos = at + len(_DATA)
            continue
        start = found.end() - 1
        end = body.find(b"]", start, split) + 1
        if end == 0:
            break
        flat = body.find(b"[", start + 1, end) == -1 and body.find(b'"', start, end) == -1
        if flat and end - start >= least:
            spans.append((start, end))
        pos = end
    return spans


def decode_large(body: bytes, header_length: int | None) -> tuple[InferRequest, memoryview]:
    """``decode`` for a large body, holding the GIL for no long call: the JSON with each
    large flat ``data`` list set aside is decoded (validated) first, then each list a
    piece at a time into an array (``pieces.decode_numbers``). Anything unusual (a
    ``data`` key elsewhere than an input's, a list that is not flat numbers) is decoded
    whole, as ``decode`` does, with its errors."""
    split = _split(body, header_length)
    spans = _data_spans(body, split, pieces.PIECE_BYTES)
    if not spans:
        return decode(body, header_length)
    parts: list[bytes] = []
    at = 0
    for index, (start, end) in enumerate(spans):
        parts += (body[at:start], b'"\\u0000edgepub-data:%d"' % index)
        at = end
    parts.append(body[at:split])
    try:
        request = _header(b"".join(parts))
        inputs = [_filled(tensor, body, spans) for tensor in request.inputs]
    except (BadRequest, KeyError, ValueError, TypeError, OverflowError, msgspec.MsgspecError):
        return decode(body, header_length)  # its own message, of the body as sent
    if sorted(i for i, _ in inputs if i is not None) != list(range(len(spans))):
        return decode(body, header_length)
    request = msgspec.structs.replace(request, inputs=[tensor for _, tensor in inputs])
    return _checked(request), memoryview(body)[split:]


def _filled(
    tensor: InputTensor, body: bytes, spans: list[tuple[int, int]]
) -> tuple[int | None, InputTensor]:
    """(which span, the tensor with its data) for a tensor whose data was set aside."""
    data = tensor.data
    if not (isinstance(data, str) and data.startswith(_PLACE)):
        return None, tensor
    index = int(data[len(_PLACE) :])
    start, end = spans[index]
    numbers = pieces.decode_numbers(body, start, end, _NUMBERS[tensor.datatype], None)
    return index, msgspec.structs.replace(tensor, data=numbers)


def _bytes_elements(raw: memoryview, count: int, name: str) -> np.ndarray[Any, Any]:
    out: list[str] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {name!r}: BYTES data ends early", field=name)
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out.append(bytes(raw[offset : offset + size]).decode("utf-8", "replace"))
        offset += size
    if offset != len(raw):
        raise BadRequest(f"input {name!r}: BYTES data has trailing bytes", field=name)
    return np.array(out, dtype=object)


def _binary_tensor(tensor: InputTensor, spec: TensorSpec, raw: memoryview) -> np.ndarray[Any, Any]:
    count = math.prod(tensor.shape)
    if spec.dtype == "string":
        return _bytes_elements(raw, count, tensor.name).reshape(tensor.shape)
    dtype = numpy_dtype(spec.dtype).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"input {tensor.name!r}: shape {tensor.shape} of {tensor.datatype} needs "
            f"{count * dtype.itemsize} bytes; binary_data_size is {len(raw)}",
            field=tensor.name,
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)


def _json_tensor(tensor: InputTensor, spec: TensorSpec) -> np.ndarray[Any, Any]:
    if tensor.data is None:
        raise BadRequest(
            f"input {tensor.name!r} has neither data nor binary_data_size", field=tensor.name
        )
    try:
        values = np.asarray(tensor.data, dtype=object if spec.dtype == "string" else None)
    except ValueError:
        raise BadRequest(
            f"input {tensor.name!r}: data is a ragged list", field=tensor.name
        ) from None
    except (TypeError, OverflowError, RecursionError) as exc:
        raise BadRequest(
            f"input {tensor.name!r}: data is not a list of numbers: {exc}", field=tensor.name
        ) from None
    count = math.prod(tensor.shape)
    if values.size != count:
        raise BadRequest(
            f"input {tensor.name!r}: shape {tensor.shape} needs {count} values; data has "
            f"{values.size}",
            field=tensor.name,
        )
    return convert(spec, values.reshape(tensor.shape))


def _check_header(tensor: InputTensor, spec: TensorSpec) -> None:
    expected = OIP_DATATYPES.get(spec.dtype, spec.dtype)
    if tensor.datatype != expected:
        raise BadRequest(
            f"input {tensor.name!r} has datatype {tensor.datatype}; the model expects {expected}",
            field=tensor.name,
        )
    if any(d < 0 for d in tensor.shape):
        raise BadRequest(
            f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension",
            field=tensor.name,
        )
    check_shape(spec, tensor.shape, per_record=False)


def to_feed(
    request: InferRequest,
    binary: memoryview,
    inputs: Sequence[TensorSpec],
    max_records: int | None = None,
) -> tuple[dict[str, np.ndarray[Any, Any]], int]:
    """(arrays for onnxruntime, records = the first input's first dimension)."""
    specs = {s.name: s for s in inputs}
    feed: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise BadRequest(
                f"the model has no input {tensor.name!r}; its inputs are {sorted(specs)}",
                field=tensor.name,
            )
        _check_header(tensor, spec)
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(
                    f"input {tensor.name!r}: binary_data_size {size!r} overruns "
                    f"the {len(binary)} bytes of binary data",
                    field=tensor.name,
                )
            feed[tensor.name] = _binary_tensor(tensor, spec, binary[offset : offset + size])
            offset += size
        else:
            feed[tensor.name] = _json_tensor(tensor, spec)
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} bytes of binary data belong to no input", field="body"
        )
    missing = [name for name in specs if name not in feed]
    if missing:
        raise BadRequest(f"the request lacks input(s) {missing}", field=missing[0])
    first = feed[request.inputs[0].name]
    records = int(first.shape[0]) if first.ndim else 1
    if max_records is not None and records > max_records:
        raise PayloadTooLarge(
            f"the request holds {records} records; this edge accepts at most {max_records} "
            "per request (EDGEPUB_MAX_RECORDS)",
            field="records",
        )
    return feed, records


def _datatype(value: np.ndarray[Any, Any]) -> str:
    return "BYTES" if value.dtype.kind in "OUS" else OIP_DATATYPES[value.dtype.name]


def _raw(value: np.ndarray[Any, Any]) -> bytes:
    if value.dtype.kind in "OUS":
        parts = []
        for item in value.reshape(-1).tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def _as_array(value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        return value
    return np.array([json.dumps(v) for v in value], dtype=object)  # maps/sequences as JSON


def encode(
    target: LoadedPipeline, request: InferRequest, outputs: dict[str, Any]
) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary tensors, the JSON header's length."""
    wanted = request.outputs or [RequestedOutput(name=name) for name in outputs]
    binary_default = bool(request.parameters.get("binary_data_output", False))
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for req in wanted:
        if req.name not in outputs:
            raise BadRequest(
                f"the model has no output {req.name!r}; its outputs are {sorted(outputs)}",
                field=req.name,
            )
        value = _as_array(outputs[req.name])
        out: dict[str, Any] = {
            "name": req.name,
            "datatype": _datatype(value),
            "shape": list(value.shape),
        }
        if req.parameters.get("binary_data", binary_default):
            raw = _raw(value)
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = value.reshape(-1).tolist()
        described.append(out)
    head: dict[str, Any] = {
        "model_name": target.name,
        "model_version": version_of(target),
        "outputs": described,
    }
    if request.id is not None:
        head["id"] = request.id
    header = _encoder.encode(head)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _tensor_meta(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": OIP_DATATYPES.get(spec.dtype, spec.dtype.upper()),
        "shape": [d if isinstance(d, int) else -1 for d in spec.shape],
    }


def model_metadata(target: LoadedPipeline) -> dict[str, Any]:
    return {
        "name": target.name,
        "versions": [version_of(target)],
        "platform": PLATFORM,
        "inputs": [_tensor_meta(s) for s in target.inputs],
        "outputs": [_tensor_meta(s) for s in target.outputs],
    }


def server_metadata() -> dict[str, Any]:
    return {"name": "edgepub-edge", "version": VERSION, "extensions": ["binary_tensor_data"]}


def dtype_of(datatype: str) -> str | None:
    return DTYPES_BY_OIP.get(datatype)
