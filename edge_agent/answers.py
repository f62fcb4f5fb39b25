"""What an inference request computes, without I/O: the feed from the body, the run, the
answer's bytes and the log event.

Plain functions, the same on the event loop's thread (quick requests) and in a worker
thread (the others, ``offload.py``). Each protocol has two halves: ``*_feed`` decodes and
validates the body into onnxruntime's feed, ``*_answer`` runs it, builds the log event and
encodes the answer. The app may run the second half in a worker when the first shows that
the run will be slow; a large body runs both there (``whole``).

A large answer is a list of pieces whose concatenation is the body, so that neither
encoding it nor copying it into one ``bytes`` holds the GIL for long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from .inference import InferenceService, elements
from .inference_log import InferenceEvent
from .offload import INLINE_BYTES
from .protocols import arrow, oip, records
from .runtime import LoadedPipeline

JSON = b"application/json"
OCTETS = b"application/octet-stream"
PIECE = 1 << 20  # bytes per piece of a large binary answer


class Ask(msgspec.Struct, frozen=True, gc=False):
    """What the request asked for, besides its body."""

    max_body: int
    max_records: int
    stream: bool = False  # an Arrow IPC stream (not a file) in
    reply: str | None = None  # the Arrow kind to answer in; None: JSON
    split: int | None = None  # OIP: the JSON header's length (binary extension)


# Fed and Answer are built once per request, positionally (msgspec's are the cheapest).
class Fed(msgspec.Struct, frozen=True, gc=False):
    feed: dict[str, Any]  # input name -> array, for onnxruntime
    echoed: Any  # what the answer echoes (records, Arrow), or the OIP request
    records: int
    size: int  # input elements


class Answer(msgspec.Struct, frozen=True, gc=False):
    body: bytes | list[Any]  # bytes, or pieces (bytes or memoryviews) that make it
    content_type: bytes
    event: InferenceEvent
    weight: int  # bytes the event holds on to: the body's and the outputs'
    extra: list[tuple[bytes, bytes]] | None = None


Feeder = Callable[[LoadedPipeline, bytes, Ask], Fed]
Answerer = Callable[[InferenceService, LoadedPipeline, Fed, int, Ask, int], Answer]


def whole(
    feeder: Feeder,
    answerer: Answerer,
    service: InferenceService,
    target: LoadedPipeline,
    parts: list[bytes],
    arrived: int,
    ask: Ask,
) -> Answer:
    """Both halves, for a worker thread, from the body as it arrived (``body_parts``)."""
    body = joined(parts)
    return answerer(service, target, feeder(target, body, ask), arrived, ask, len(body))


def joined(parts: list[bytes]) -> bytes:
    """The parts as one buffer, copied a part at a time: one ``bytes.join`` of 64 MiB holds
    the GIL for tens of milliseconds (it is a ``bytearray``, which every decoder reads)."""
    if len(parts) == 1:
        return parts[0]
    out = bytearray(sum(map(len, parts)))
    at = 0
    with memoryview(out) as view:
        for part in parts:
            view[at : at + len(part)] = part
            at += len(part)
    return out  # type: ignore[return-value]  # a buffer like bytes, for every reader here


def _weight(body_bytes: int, outputs: dict[str, Any]) -> int:
    weight = body_bytes
    for value in outputs.values():
        if type(value) is np.ndarray:
            weight += value.nbytes
    return weight


def _pieces(buffer: Any) -> bytes | list[Any]:
    """An Arrow buffer as the answer's body: copied once when small, else in slices."""
    if buffer.size <= PIECE:
        return buffer.to_pybytes()  # type: ignore[no-any-return]
    view = memoryview(buffer)
    return [view[i : i + PIECE] for i in range(0, buffer.size, PIECE)]


# --- pandas-records ------------------------------------------------------------------------


def records_feed(target: LoadedPipeline, body: bytes, ask: Ask) -> Fed:
    codec = records.codec(target)
    if len(body) <= INLINE_BYTES:
        return Fed(*codec.feed(body, ask.max_records))
    feed, echoed, count = codec.feed_of_large(body, ask.max_records)
    return Fed(feed, echoed, count, elements(feed))


def records_answer(
    service: InferenceService, target: LoadedPipeline, fed: Fed, arrived: int, ask: Ask, size: int
) -> Answer:
    # nearly every request's path: the run, its cost and the event are spelled out here
    echoed = fed.echoed
    count = fed.records
    outputs, elapsed = target.run(fed.feed, count)
    target.cost.observe(fed.size, sum(elapsed))
    partition = service.partition
    metadata = records.Metadata(target.last_model, target.version, elapsed, [], partition)
    event = InferenceEvent(
        time=arrived,
        pipeline=target.pipeline_name,
        pipeline_version=target.version,
        records=count,
        inputs=echoed,
        outputs=outputs,
        elapsed_ns=elapsed,
        model_versions=target.models,
        partition=partition,
    )
    if ask.reply is not None:
        columns = {name: arrow.column_of(values) for name, values in echoed.items()}
        body = _arrow_body(columns, outputs, count, arrived, metadata, ask.reply)
        return Answer(body, ask.reply.encode(), event, _weight(size, outputs))
    if size <= INLINE_BYTES and count <= records.ROWS_PER_CALL:  # echoed as lists
        out: bytes | list[bytes] = records.encode(echoed, outputs, count, arrived, metadata)
    else:
        out = records.encode_large(echoed, outputs, count, arrived, metadata)
    return Answer(out, records.CONTENT_TYPE, event, _weight(size, outputs))


# --- Arrow ---------------------------------------------------------------------------------


def arrow_feed(target: LoadedPipeline, body: bytes, ask: Ask) -> Fed:
    table = arrow.decode(body, ask.stream, ask.max_body, ask.max_records)
    feed, echoed = arrow.to_feed(table, target.inputs)
    return Fed(feed, echoed, table.num_rows, elements(feed))


def arrow_answer(
    service: InferenceService, target: LoadedPipeline, fed: Fed, arrived: int, ask: Ask, size: int
) -> Answer:
    feed, echoed, count = fed.feed, fed.echoed, fed.records
    outputs, elapsed = service.run(target, feed, count, fed.size)
    metadata = records.Metadata(target.last_model, target.version, elapsed, [], service.partition)
    event = service.event(target, count, arrived, feed, outputs, elapsed)
    weight = _weight(size, outputs)
    if ask.reply is None:  # Accept asked for JSON
        if count <= records.ROWS_PER_CALL:
            rows = {name: column.to_pylist() for name, column in echoed.items()}
            out: bytes | list[bytes] = records.encode(rows, outputs, count, arrived, metadata)
        else:
            out = records.encode_large(echoed, outputs, count, arrived, metadata)
        return Answer(out, records.CONTENT_TYPE, event, weight)
    body = _arrow_body(echoed, outputs, count, arrived, metadata, ask.reply)
    return Answer(body, ask.reply.encode(), event, weight)


def _arrow_body(
    echoed: dict[str, Any],
    outputs: dict[str, Any],
    count: int,
    arrived: int,
    metadata: records.Metadata,
    reply: str,
) -> bytes | list[Any]:
    meta = msgspec.structs.asdict(metadata)
    return _pieces(arrow.encode(echoed, outputs, count, arrived, meta, reply == arrow.STREAM))


# --- Open Inference Protocol ---------------------------------------------------------------


def oip_feed(target: LoadedPipeline, body: bytes, ask: Ask) -> Fed:
    decode = oip.decode if len(body) <= INLINE_BYTES else oip.decode_large
    parsed, binary = decode(body, ask.split)
    feed, count = oip.to_feed(parsed, binary, target.inputs, ask.max_records)
    return Fed(feed, parsed, count, elements(feed))


def oip_answer(
    service: InferenceService, target: LoadedPipeline, fed: Fed, arrived: int, ask: Ask, size: int
) -> Answer:
    feed, parsed, count = fed.feed, fed.echoed, fed.records
    outputs, elapsed = service.run(target, feed, count, fed.size)
    event = service.event(target, count, arrived, feed, outputs, elapsed)
    out, header_length = oip.encode(target, parsed, outputs)
    weight = _weight(size, outputs)
    if header_length is None:
        return Answer(out, JSON, event, weight)
    return Answer(out, OCTETS, event, weight, [(oip.HEADER_LENGTH, b"%d" % header_length)])
