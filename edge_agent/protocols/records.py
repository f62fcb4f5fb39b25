"""pandas-records JSON, the Wallaroo edge's own format.

In: a JSON list of records, one key per model input (``[{"tensor": [1.0, ...]}, ...]``).
Out: one record per input record, shaped as the Wallaroo edge answers::

    {"time": <ms>, "in": {...}, "out": {...}, "anomaly": {"count": 0},
     "check_failures": [], "metadata": {"last_model": "{...}", "pipeline_version": "...",
     "elapsed": [ns per step], "dropped": [], "partition": "<edge>"}}

which ``pandas.json_normalize`` flattens to the ``time``/``in.*``/``out.*``/``metadata.*``
columns that ``pipeline.logs()`` shows.

Decoding is validation: each model gets a msgspec decoder typed from its inputs (names,
element types and their ranges, nesting depth; no other fields), so a wrong type, an
integer out of range, a missing or an unknown input is caught in C while parsing, with the
record and the input in the message; numpy then checks the shapes.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np

from edgepub.shared.schemas import TensorSpec

from ..errors import BadRequest, PayloadTooLarge
from ..runtime import Pipeline
from ..tensors import check_shape, column, numpy_dtype, shape_text

CONTENT_TYPE = b"application/json; format=pandas-records"
_encoder = msgspec.json.Encoder()
_ELEMENT: dict[str, Any] = {"string": str, "bool": bool}
_PATH = re.compile(r"`\$\[(\d+)\](?:\.([^.\[`]+))?")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


class Anomaly(msgspec.Struct, gc=False):
    count: int = 0


class Metadata(msgspec.Struct, gc=False):
    last_model: str
    pipeline_version: str
    elapsed: list[int]
    dropped: list[str]
    partition: str


class Record(msgspec.Struct, rename={"in_": "in"}, gc=False):
    time: int
    in_: dict[str, Any]
    out: dict[str, Any]
    anomaly: Anomaly
    check_failures: list[Any]
    metadata: Metadata


def _element(dtype: str) -> Any:
    if dtype in _ELEMENT:
        return _ELEMENT[dtype]
    if dtype.startswith(("int", "uint")):  # in range, or numpy would overflow later
        info = np.iinfo(dtype)
        return Annotated[int, msgspec.Meta(ge=int(info.min), le=int(info.max))]
    if dtype.startswith("float"):
        return float
    return Any


def _fixed_rows(spec: TensorSpec) -> tuple[int, ...] | None:
    """A record's shape when every dimension is fixed (the fast shape check)."""
    dims = spec.shape[1:]
    return tuple(dims) if spec.shape and all(isinstance(d, int) for d in dims) else None  # type: ignore[arg-type]


def _value_type(spec: TensorSpec) -> Any:
    if not spec.shape:
        return Any  # rank unknown: numpy decides
    kind = _element(spec.dtype)
    for _ in spec.shape[1:]:
        kind = list[kind]  # type: ignore[valid-type]
    return kind


class RecordsCodec:
    """The typed decoder for one model's inputs."""

    def __init__(self, inputs: Sequence[TensorSpec]) -> None:
        self.inputs = tuple(inputs)
        fields = [(f"f{i}", _value_type(spec)) for i, spec in enumerate(self.inputs)]
        rename = {f"f{i}": spec.name for i, spec in enumerate(self.inputs)}
        record = msgspec.defstruct(
            "Record", fields, rename=rename, gc=False, forbid_unknown_fields=True
        )
        self.decoder = msgspec.json.Decoder(list[record])  # type: ignore[valid-type]
        self.getters: list[tuple[TensorSpec, Callable[[Any], Any], Any, Any]] = [
            (spec, operator.attrgetter(f"f{i}"), numpy_dtype(spec.dtype), _fixed_rows(spec))
            for i, spec in enumerate(self.inputs)
        ]

    def _explain(self, exc: msgspec.ValidationError) -> BadRequest:
        text = str(exc)
        names = ", ".join(repr(s.name) for s in self.inputs)
        missing = _MISSING.search(text)
        where = _PATH.search(text)
        if missing and where:
            return BadRequest(
                f"record {where[1]} has no input {missing[1]!r}; the model's inputs are {names}",
                field=missing[1],
            )
        unknown = _UNKNOWN.search(text)
        if unknown and where:
            return BadRequest(
                f"record {where[1]} has a field {unknown[1]!r} the model does not take; its "
                f"inputs are {names}",
                field=unknown[1],
            )
        if where and where[2]:
            spec = next((s for s in self.inputs if s.name == where[2]), None)
            expected = (
                f"; each record's {spec.name!r} must be {spec.dtype} values of shape "
                f"{shape_text(spec.shape[1:])}"
                if spec
                else ""
            )
            return BadRequest(
                f"input {where[2]!r} of record {where[1]}: {text}{expected}", field=where[2]
            )
        if where:
            return BadRequest(f"record {where[1]} is not a JSON object: {text}", field="body")
        return BadRequest(f"expected a JSON list of records (pandas-records): {text}", field="body")

    def decode(self, body: bytes, max_records: int | None = None) -> list[Any]:
        """The request's records; malformed JSON, wrong types or missing inputs are 400s,
        more than ``max_records`` records a 413."""
        try:
            records = self.decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise self._explain(exc) from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}", field="body") from None
        except RecursionError:  # msgspec's guard against nesting past the C stack
            raise BadRequest(
                "request body nests JSON too deeply for a list of records", field="body"
            ) from None
        if not records:
            raise BadRequest("the list of records is empty", field="body")
        if max_records is not None and len(records) > max_records:
            raise PayloadTooLarge(
                f"the request holds {len(records)} records; this edge accepts at most "
                f"{max_records} per request (EDGEPUB_MAX_RECORDS)",
                field="records",
            )
        return records

    def to_feed(
        self, records: Sequence[Any]
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, list[Any]]]:
        """(arrays for onnxruntime, the per-record values echoed as ``in`` and logged)."""
        feed: dict[str, np.ndarray[Any, Any]] = {}
        raw: dict[str, list[Any]] = {}
        for spec, get, dtype, rows in self.getters:
            values = [get(record) for record in records]
            try:
                try:
                    array = np.asarray(values, dtype=dtype)
                except ValueError:  # ragged: let column() say where
                    array = column(spec, values, typed=True)
            except (TypeError, OverflowError) as exc:  # inputs of unknown rank are untyped
                raise BadRequest(
                    f"input {spec.name!r} must hold {spec.dtype} values: {exc}", field=spec.name
                ) from None
            if array.shape[1:] != rows:
                check_shape(spec, array.shape, per_record=True)
            feed[spec.name] = array
            raw[spec.name] = values
        return feed, raw


def codec(target: Pipeline) -> RecordsCodec:
    """The records codec of a pipeline, built on first use."""
    found = target.memo.get("records")
    if found is None:
        found = target.memo["records"] = RecordsCodec(target.inputs)
    return found


_ANOMALY = Anomaly()  # shared by every answer; never mutated
_NO_FAILURES: list[Any] = []


def _per_record(value: Any) -> list[Any]:
    if isinstance(value, np.ndarray):
        return value.tolist()  # type: ignore[no-any-return]
    return list(value)


def encode(
    raw_inputs: dict[str, list[Any]],
    outputs: dict[str, Any],
    records: int,
    time_ms: int,
    metadata: Metadata,
) -> bytes:
    """The response records (see the module docstring)."""
    if len(raw_inputs) == 1 and len(outputs) == 1:  # the common case, without inner loops
        ((in_name, in_values),) = raw_inputs.items()
        ((out_name, out_value),) = outputs.items()
        result = [
            Record(time_ms, {in_name: i}, {out_name: o}, _ANOMALY, _NO_FAILURES, metadata)
            for i, o in zip(in_values, _per_record(out_value), strict=True)
        ]
        return _encoder.encode(result)
    outs = {name: _per_record(value) for name, value in outputs.items()}
    result = [
        Record(
            time_ms,
            {n: v[i] for n, v in raw_inputs.items()},
            {n: v[i] for n, v in outs.items()},
            _ANOMALY,
            _NO_FAILURES,
            metadata,
        )
        for i in range(records)
    ]
    return _encoder.encode(result)
