"""What an Arrow IPC stream asks for, read from its message headers alone.

pyarrow decompresses a record batch as it reads it, so a 9 KB zstd body can become
hundreds of megabytes before any check runs. ``measure`` walks the stream's framing and
each message's flatbuffer header (``RecordBatch.length``, its buffers and, when the body
is compressed, each buffer's uncompressed-length prefix) without decompressing or
allocating, so the agent can refuse before pyarrow reads the body.

Pure: bytes in, an ``Extent`` out, or ``IpcError`` for framing that does not hold together.
The layouts are Arrow's ``Message.fbs``/``Schema.fbs`` (format version 5) and the
flatbuffers wire format: a table starts with an int32 back-offset to its vtable, whose
uint16 slots give each field's offset inside the table (0: absent).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_BUFFER = struct.Struct("<qq")  # Buffer {offset: long, length: long}
_CONTINUATION = 0xFFFFFFFF
_MAX_METADATA = 1 << 24  # a message header past 16 MiB describes no batch a client sends

# MessageHeader union tags
_DICTIONARY_BATCH = 2
_RECORD_BATCH = 3

# field indexes
_MESSAGE_HEADER_TYPE, _MESSAGE_HEADER, _MESSAGE_BODY_LENGTH = 1, 2, 3
_BATCH_LENGTH, _BATCH_BUFFERS, _BATCH_COMPRESSION = 0, 2, 3
_DICTIONARY_DATA = 1


class IpcError(ValueError):
    """The bytes are not an Arrow IPC stream; the message says where it stops making sense."""


class Extent(NamedTuple):
    records: int  # rows over the record batches
    decoded: int  # bytes the batches' buffers take once decompressed
    messages: int  # messages read (schema, dictionaries, batches)


def _read(fmt: struct.Struct, buf: memoryview, pos: int, what: str) -> int:
    if pos < 0 or pos + fmt.size > len(buf):
        raise IpcError(f"{what} lies outside its {len(buf)}-byte header")
    value: int = fmt.unpack_from(buf, pos)[0]
    return value


class _Table:
    """One flatbuffer table: read a field by index, with every offset bounds-checked."""

    __slots__ = ("buf", "pos", "vsize", "vtable")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - _read(_I32, buf, pos, "a table")
        self.vsize = _read(_U16, buf, self.vtable, "a vtable")
        if self.vsize < 4 or self.vsize % 2 or self.vtable + self.vsize > len(buf):
            raise IpcError("a vtable has an impossible size")

    def _at(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot + 2 > self.vsize:
            return None
        offset = _read(_U16, self.buf, self.vtable + slot, "a vtable slot")
        return None if offset == 0 else self.pos + offset

    def scalar(self, index: int, fmt: struct.Struct, default: int) -> int:
        at = self._at(index)
        return default if at is None else _read(fmt, self.buf, at, "a field")

    def table(self, index: int) -> _Table | None:
        at = self._at(index)
        if at is None:
            return None
        return _Table(self.buf, at + _read(_U32, self.buf, at, "a table offset"))

    def vector(self, index: int, item_size: int) -> range:
        """Positions of a vector's items (empty when absent)."""
        at = self._at(index)
        if at is None:
            return range(0)
        start = at + _read(_U32, self.buf, at, "a vector offset")
        count = _read(_U32, self.buf, start, "a vector length")
        if start + 4 + count * item_size > len(self.buf):
            raise IpcError("a vector runs past the end of its header")
        return range(start + 4, start + 4 + count * item_size, item_size)


def _batch_extent(batch: _Table, body: memoryview) -> tuple[int, int]:
    """(rows, decoded bytes) of one RecordBatch header over its body."""
    rows = batch.scalar(_BATCH_LENGTH, _I64, 0)
    if rows < 0:
        raise IpcError(f"a record batch claims {rows} rows")
    compressed = batch.table(_BATCH_COMPRESSION) is not None
    decoded = 0
    for at in batch.vector(_BATCH_BUFFERS, _BUFFER.size):
        offset, length = _BUFFER.unpack_from(batch.buf, at)
        if offset < 0 or length < 0 or offset + length > len(body):
            raise IpcError(
                f"a buffer at {offset} of {length} bytes lies outside the {len(body)}-byte body"
            )
        if not compressed or length == 0:
            decoded += length
            continue
        if length < 8:
            raise IpcError("a compressed buffer is shorter than its length prefix")
        inflated = _I64.unpack_from(body, offset)[0]
        if inflated < -1:
            raise IpcError(f"a compressed buffer claims {inflated} bytes")
        decoded += length - 8 if inflated == -1 else inflated  # -1: stored uncompressed
    return rows, decoded


def _message(meta: memoryview) -> tuple[int, int, _Table | None]:
    """(header type, body length, header table) of one message's flatbuffer."""
    message = _Table(meta, _read(_U32, meta, 0, "the root offset"))
    kind = message.scalar(_MESSAGE_HEADER_TYPE, _U8, 0)
    body_length = message.scalar(_MESSAGE_BODY_LENGTH, _I64, 0)
    if body_length < 0:
        raise IpcError(f"a message claims a {body_length}-byte body")
    return kind, body_length, message.table(_MESSAGE_HEADER)


def measure(data: bytes | memoryview, stop_after: int) -> Extent:
    """Rows and decoded bytes the stream's batches claim.

    Stops after ``stop_after`` messages (the caller refuses that many anyway), so a body of
    a million tiny messages costs no more than ``stop_after`` of them.
    """
    view = memoryview(data).cast("B")
    pos = records = decoded = messages = 0
    while pos < len(view) and messages <= stop_after:
        size = _read(_U32, view, pos, "a message length")
        pos += 4
        if size == _CONTINUATION:
            size = _read(_U32, view, pos, "a message length")
            pos += 4
        if size == 0:  # end-of-stream marker
            break
        if size > _MAX_METADATA or pos + size > len(view):
            raise IpcError(f"a {size}-byte message header runs past the end of the body")
        kind, body_length, header = _message(view[pos : pos + size])
        pos += size
        if pos + body_length > len(view):
            raise IpcError(f"a {body_length}-byte message body runs past the end of the body")
        body = view[pos : pos + body_length]
        pos += body_length
        messages += 1
        if kind == _DICTIONARY_BATCH and header is not None:
            header = header.table(_DICTIONARY_DATA)
        if kind in (_RECORD_BATCH, _DICTIONARY_BATCH):
            if header is None:
                raise IpcError("a batch message has no batch header")
            rows, size_of = _batch_extent(header, body)
            decoded += size_of
            records += rows if kind == _RECORD_BATCH else 0
    return Extent(records, decoded, messages)
