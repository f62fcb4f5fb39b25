"""Does an ONNX file stand alone? A cheap walk over its protobuf wire format (pure).

A model may keep tensors in sibling files ("external data": ``TensorProto.data_location =
EXTERNAL`` with ``external_data`` entries naming the file). onnxruntime loads those files
silently from beside the model's path, so such a model looks fine where it was saved; but
edgepub uploads one file, and an edge would never load it. Loading from bytes is no test
either: onnxruntime then looks in the current directory.

``OnnxScanner`` is a push parser (``feed`` chunks, then ``close``) that follows only the
messages that can hold tensors (graphs, nodes, attributes, initializers, sparse tensors,
functions, training graphs) and skips every other payload without looking at it, so a large
model costs about as much as its number of fields, not its bytes: a seekable file is walked
without reading its weights at all (``scan_file``), and a stream is checked as it passes.

It also says when the bytes are not a well-formed ONNX model (truncated, a field running
past its message, no graph), which no edge could load either.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import msgspec

CHUNK = 1 << 20
MAX_DEPTH = 100  # protobuf's own default recursion limit
MAX_STRING = 4096  # a tensor name or an external-data entry longer than this is not kept
MAX_REPORTED = 20

# message kinds
MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE, TRAINING, FUNCTION, ENTRY = range(9)

# (message kind, field number) -> the kind of the length-delimited message in that field
_CHILDREN: dict[int, dict[int, int]] = {
    MODEL: {7: GRAPH, 20: TRAINING, 25: FUNCTION},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    TENSOR: {13: ENTRY},
    SPARSE: {1: TENSOR, 2: TENSOR},
    TRAINING: {1: GRAPH, 2: GRAPH},
    FUNCTION: {7: NODE, 11: ATTRIBUTE},
    ENTRY: {},
}
# string fields kept: TensorProto.name, StringStringEntryProto.key/value
_STRINGS = {(TENSOR, 8), (ENTRY, 1), (ENTRY, 2)}
_DATA_LOCATION = 14  # TensorProto.data_location; 1 = EXTERNAL
_GRAPH_FIELD = 7


class ExternalTensor(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    location: str  # the file it points at ("" when the entry names none)


class Scan(msgspec.Struct, frozen=True, kw_only=True):
    external: tuple[ExternalTensor, ...] = ()  # the first MAX_REPORTED
    external_count: int = 0
    problem: str | None = None  # why the bytes are not a well-formed ONNX model

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.external_count


class _Frame:
    __slots__ = ("end", "external", "kind", "location", "name", "strings")

    def __init__(self, kind: int, end: int | None) -> None:
        self.kind = kind
        self.end = end  # absolute offset where the message ends; None: at end of input
        self.name = ""
        self.location = ""
        self.external = False
        self.strings: dict[int, str] = {}


class _NeedMore(Exception):
    pass


def _varint(buf: bytearray, i: int) -> tuple[int, int]:
    """(value, next index); _NeedMore if the buffer ends inside it; ValueError if too long."""
    value = shift = 0
    while True:
        if i >= len(buf):
            raise _NeedMore
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise ValueError("a varint longer than 10 bytes")


class OnnxScanner:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # absolute offset of _buf[0]
        self._skip = 0
        self._string: tuple[int, int] | None = None  # (field, length) awaited whole
        self._stack = [_Frame(MODEL, None)]
        self._graph = False
        self._external: list[ExternalTensor] = []
        self._external_count = 0
        self._problem: str | None = None
        self._at = 0  # where the field being read starts, for error messages

    @property
    def offset(self) -> int:
        """Bytes consumed so far (fed and skipped)."""
        return self._pos + len(self._buf)

    def pending_skip(self) -> int:
        """Bytes the scanner will skip unseen next: a file reader may seek past them and
        call ``skipped(n)`` instead of feeding them."""
        return self._skip if not self._buf and self._problem is None else 0

    def skipped(self, n: int) -> None:
        if n > self.pending_skip():
            raise ValueError(f"skipped {n} bytes, only {self.pending_skip()} were to be skipped")
        self._skip -= n
        self._pos += n

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._problem is not None or not data:
            return
        view = memoryview(data)
        if not self._buf and self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            self._pos += n
            view = view[n:]
            if not view:
                return
        self._buf += view
        try:
            self._run()
        except ValueError as exc:
            self._problem = f"{exc} (at byte {self._at})"

    def close(self) -> Scan:
        end = self.offset
        if self._problem is None:
            if self._skip or self._string is not None or self._buf:
                self._problem = f"the file ends inside a field (at byte {end}): truncated"
            else:
                self._pop_ended(end)
                if len(self._stack) > 1:
                    self._problem = f"the file ends inside a message (at byte {end}): truncated"
                elif not self._graph:
                    self._problem = "it has no graph"
        return Scan(
            external=tuple(self._external),
            external_count=self._external_count,
            problem=self._problem,
        )

    # --- the walk -------------------------------------------------------------------------

    def _run(self) -> None:
        buf, i = self._buf, 0
        try:
            while True:
                if self._skip:
                    n = min(self._skip, len(buf) - i)
                    i += n
                    self._skip -= n
                    if self._skip:
                        break
                here = self._pos + i
                self._pop_ended(here)
                top = self._stack[-1]
                if top.end is not None and here > top.end:
                    raise ValueError("a field runs past the end of its message")
                if self._string is not None:
                    field, length = self._string
                    if len(buf) - i < length:
                        break
                    top.strings[field] = bytes(buf[i : i + length]).decode(errors="replace")
                    i += length
                    self._string = None
                    continue
                if i >= len(buf):
                    break
                self._at = here
                i = self._field(buf, i, top)
        except _NeedMore:
            pass
        del buf[:i]
        self._pos += i

    def _field(self, buf: bytearray, i: int, top: _Frame) -> int:
        """Read one field header at ``i``; return where its payload handling leaves off."""
        tag, j = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("a field numbered 0")
        if wire == 0:
            value, j = _varint(buf, j)
            if top.kind == TENSOR and number == _DATA_LOCATION and value == 1:
                top.external = True
            return j
        if wire == 1 or wire == 5:
            self._skip = 8 if wire == 1 else 4
            return j
        if wire != 2:
            raise ValueError(f"wire type {wire} (not in ONNX)")
        length, j = _varint(buf, j)
        start = self._pos + j
        if top.end is not None and start + length > top.end:
            raise ValueError("a field runs past the end of its message")
        child = _CHILDREN[top.kind].get(number)
        if child is not None:
            if len(self._stack) >= MAX_DEPTH:
                raise ValueError(f"messages nested more than {MAX_DEPTH} deep")
            if top.kind == MODEL and number == _GRAPH_FIELD:
                self._graph = True
            self._stack.append(_Frame(child, start + length))
        elif (top.kind, number) in _STRINGS and length <= MAX_STRING:
            self._string = (number, length)
        else:
            self._skip = length
        return j

    def _pop_ended(self, here: int) -> None:
        while self._stack[-1].end == here:
            self._finish(self._stack.pop())

    def _finish(self, frame: _Frame) -> None:
        parent = self._stack[-1]
        if frame.kind == ENTRY:
            parent.external = True  # any external_data entry means the data is elsewhere
            if frame.strings.get(1) == "location":
                parent.location = frame.strings.get(2, "")
        elif frame.kind == TENSOR and frame.external:
            self._external_count += 1
            if len(self._external) < MAX_REPORTED:
                name = frame.strings.get(8, "")
                self._external.append(ExternalTensor(name=name, location=frame.location))


def scan_stream(stream: BinaryIO) -> Scan:
    """Scan a binary stream, seeking past payloads when it can."""
    scanner = OnnxScanner()
    seekable = stream.seekable()
    while True:
        skip = scanner.pending_skip()
        if seekable and skip > CHUNK:
            stream.seek(skip, os.SEEK_CUR)
            scanner.skipped(skip)
            continue
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        scanner.feed(chunk)
    return scanner.close()


def scan_file(path: str | Path) -> Scan:
    with open(path, "rb") as f:
        return scan_stream(f)


def scan_bytes(data: bytes) -> Scan:
    return scan_stream(io.BytesIO(data))


def describe(scan: Scan, what: str) -> str:
    """A one-line account of what is wrong, naming the fix; "" when nothing is."""
    if scan.external_count:
        first = scan.external[0]
        where = f" in {first.location!r}" if first.location else ""
        more = f" and {scan.external_count - 1} more" if scan.external_count > 1 else ""
        return (
            f"{what} keeps tensor {first.name!r}{where}{more} outside the .onnx file "
            "(external data), and edgepub uploads the one file; re-save it with all tensors "
            "inside: onnx.save(onnx.load(path), path, save_as_external_data=False) "
            "(a model over 2 GB cannot be one ONNX file and cannot be published)"
        )
    if scan.problem is not None:
        return f"{what} is not a well-formed ONNX model: {scan.problem}"
    return ""
