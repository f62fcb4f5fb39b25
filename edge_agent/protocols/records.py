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
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np

from edgepub.shared.schemas import TensorSpec

from ..errors import BadRequest, PayloadTooLarge, RequestError
from ..runtime import LoadedPipeline
from ..tensors import check_shape, column, numpy_dtype, shape_text
from . import pieces

CONTENT_TYPE = b"application/json; format=pandas-records"
_encoder = msgspec.json.Encoder()
_ELEMENT: dict[str, Any] = {"string": str, "bool": bool}
_PATH = re.compile(r"`\$\[(\d+)\](?:\.([^.\[`]+))?")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
ROWS_PER_CALL = 4096  # records converted or encoded in one call on the large-body path


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
        self.single = self.getters[0] if len(self.getters) == 1 else None

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
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise self._refusal(exc) from None
        except RecursionError:  # msgspec's guard against nesting past the C stack
            raise _too_deep() from None
        if not records or (max_records is not None and len(records) > max_records):
            raise _count_refused(len(records), max_records)
        return records

    def feed(
        self, body: bytes, max_records: int
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, list[Any]], int, int]:
        """(feed, echoed values, records, input elements) of a small body: ``decode`` and
        ``to_feed`` in as few steps as it takes, since it is nearly every request's path."""
        records = self.decode(body, max_records)  # the one place refusals are worded
        count = len(records)
        single = self.single
        if single is None:
            feed, echoed = self.to_feed(records)
            return feed, echoed, count, sum(a.size for a in feed.values())
        spec, get, dtype, rows = single
        values = [get(record) for record in records]
        try:
            array = np.asarray(values, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            array = _array(spec, values, dtype, rows)  # says why
        if array.shape[1:] != rows:
            check_shape(spec, array.shape, per_record=True)
        return {spec.name: array}, {spec.name: values}, count, array.size

    def _refusal(self, exc: msgspec.ValidationError | msgspec.DecodeError) -> BadRequest:
        if isinstance(exc, msgspec.ValidationError):
            return self._explain(exc)
        return BadRequest(f"request body is not valid JSON: {exc}", field="body")

    def to_feed(
        self, records: Sequence[Any]
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, list[Any]]]:
        """(arrays for onnxruntime, the per-record values echoed as ``in`` and logged)."""
        feed: dict[str, np.ndarray[Any, Any]] = {}
        raw: dict[str, list[Any]] = {}
        for spec, get, dtype, rows in self.getters:
            values = [get(record) for record in records]
            feed[spec.name] = _array(spec, values, dtype, rows)
            raw[spec.name] = values
        return feed, raw

    def feed_of_large(
        self, body: bytes, max_records: int | None
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Any], int]:
        """``to_feed(decode(body))`` for a large body, a piece at a time (``pieces``): no
        call holds the GIL for longer than one piece, so the event loop keeps running.

        The echoed values come back as arrays of the decoded values, exactly (``_ECHO``),
        not lists: millions of small lists would each be a pause of the whole process,
        when the cycle collector walks them and when they are freed.
        """
        parts: dict[str, list[tuple[int, np.ndarray[Any, Any]]]] = {
            spec.name: [] for spec in self.inputs
        }

        def each(records: list[Any], first: int) -> None:
            if max_records is not None and first + len(records) > max_records:
                raise _too_many(f"more than {max_records}", max_records)
            if not records:
                return
            for spec, get, dtype, rows in self.getters:
                values = [get(record) for record in records]
                exact = _ECHO.get(dtype.kind, dtype)
                parts[spec.name].append((first, _array(spec, values, exact, rows, first)))

        try:
            count = pieces.decode_list(body, self.decoder.decode, each)
        except pieces.PieceError as exc:
            raise self._refusal(exc.error) from None
        except RecursionError:
            raise _too_deep() from None
        if not count:
            raise BadRequest("the list of records is empty", field="body")
        feed: dict[str, np.ndarray[Any, Any]] = {}
        echoed: dict[str, Any] = {}
        for spec, _, dtype, _ in self.getters:
            echo = echoed[spec.name] = _joined(spec, parts.pop(spec.name))
            feed[spec.name] = echo if echo.dtype == dtype else echo.astype(dtype)
        return feed, echoed, count


# The dtype that holds a decoded value exactly, by the kind of the model's dtype.
_ECHO = {"f": np.dtype(np.float64), "i": np.dtype(np.int64), "u": np.dtype(np.uint64)}


def _array(
    spec: TensorSpec, values: list[Any], dtype: Any, rows: Any, first: int = 0
) -> np.ndarray[Any, Any]:
    try:
        try:
            array = np.asarray(values, dtype=dtype)
        except ValueError:  # ragged: let column() say where
            array = column(spec, values, typed=True, first=first)
    except (TypeError, OverflowError) as exc:  # inputs of unknown rank are untyped
        raise BadRequest(
            f"input {spec.name!r} must hold {spec.dtype} values: {exc}", field=spec.name
        ) from None
    if array.shape[1:] != rows:
        check_shape(spec, array.shape, per_record=True)
    return array


def _joined(
    spec: TensorSpec, parts: list[tuple[int, np.ndarray[Any, Any]]]
) -> np.ndarray[Any, Any]:
    """One array of the pieces' arrays, which must agree on a record's shape."""
    shape = parts[0][1].shape[1:]
    for first, part in parts:
        if part.shape[1:] != shape:
            raise BadRequest(
                f"input {spec.name!r}: record 0 has shape {list(shape)} but record {first} "
                f"has {list(part.shape[1:])}",
                field=spec.name,
            )
    return parts[0][1] if len(parts) == 1 else np.concatenate([p for _, p in parts])


def _count_refused(count: int, max_records: int | None) -> RequestError:
    if not count:
        return BadRequest("the list of records is empty", field="body")
    return _too_many(f"{count}", max_records or count)


def _too_many(count: str, max_records: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request holds {count} records; this edge accepts at most {max_records} per "
        "request (EDGEPUB_MAX_RECORDS)",
        field="records",
    )


def _too_deep() -> BadRequest:
    return BadRequest("request body nests JSON too deeply for a list of records", field="body")


def codec(target: LoadedPipeline) -> RecordsCodec:
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


def _records(
    raw_inputs: dict[str, list[Any]],
    outputs: dict[str, Any],
    records: int,
    time_ms: int,
    metadata: Metadata,
) -> list[Record]:
    if len(raw_inputs) == 1 and len(outputs) == 1:  # the common case, without inner loops
        ((in_name, in_values),) = raw_inputs.items()
        ((out_name, out_value),) = outputs.items()
        return [
            Record(time_ms, {in_name: i}, {out_name: o}, _ANOMALY, _NO_FAILURES, metadata)
            for i, o in zip(in_values, _per_record(out_value), strict=True)
        ]
    outs = {name: _per_record(value) for name, value in outputs.items()}
    return [
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


def encode(
    raw_inputs: dict[str, list[Any]],
    outputs: dict[str, Any],
    records: int,
    time_ms: int,
    metadata: Metadata,
) -> bytes:
    """The response records (see the module docstring)."""
    if len(raw_inputs) == 1 and len(outputs) == 1:  # the common case, in one step
        ((in_name, in_values),) = raw_inputs.items()
        ((out_name, out_value),) = outputs.items()
        outs = out_value.tolist() if type(out_value) is np.ndarray else list(out_value)
        return _encoder.encode(
            [
                Record(time_ms, {in_name: i}, {out_name: o}, _ANOMALY, _NO_FAILURES, metadata)
                for i, o in zip(in_values, outs, strict=True)
            ]
        )
    return _encoder.encode(_records(raw_inputs, outputs, records, time_ms, metadata))


def encode_large(
    raw_inputs: dict[str, Any],
    outputs: dict[str, Any],
    records: int,
    time_ms: int,
    metadata: Metadata,
) -> list[bytes]:
    """``encode`` as pieces of ``ROWS_PER_CALL`` records each, whose concatenation is the
    answer; ``raw_inputs`` are per-record lists or anything sliced into them (Arrow columns
    are, through ``to_pylist``)."""

    def chunks() -> Iterator[list[Record]]:
        for i in range(0, records, ROWS_PER_CALL):
            j = min(records, i + ROWS_PER_CALL)
            ins = {n: _rows(v, i, j) for n, v in raw_inputs.items()}
            outs = {n: v[i:j] for n, v in outputs.items()}
            yield _records(ins, outs, j - i, time_ms, metadata)

    return pieces.encode_list(chunks(), _encoder.encode)


def _rows(values: Any, start: int, stop: int) -> list[Any]:
    part = values[start:stop]
    if not isinstance(part, list):
        part = part.tolist() if isinstance(part, np.ndarray) else part.to_pylist()
    return part  # type: ignore[no-any-return]
