"""Streaming model bytes from the event loop into an upload thread
(services/registry_push/pipe.py, cache.overlap): both sides end whichever fails first,
the first real error surfaces, and wrong bytes never finish an upload."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading

import numpy as np
import pytest

from edgepub.services.registry_push.cache import overlap
from edgepub.services.registry_push.pipe import Pipe, PipeClosed, VerifyingReader
from edgepub.shared.errors import (
    DigestMismatchError,
    InvalidModelError,
    ModelExternalDataError,
    NotFoundError,
    RegistryUnavailableError,
)
from edgepub.shared.onnx_scan import OnnxScanner

CHUNK = 64 * 1024
DATA = bytes(range(256)) * 4096  # 1 MiB


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


async def produce(pipe: Pipe, parts: list[bytes], fail_after: int | None = None) -> None:
    for i, part in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise NotFoundError("model 'm' is not in the object store")
        await pipe.put(part)


def run(
    parts: list[bytes],
    consume: object,
    *,
    want: bytes = DATA,
    fail_after: int | None = None,
    limit: int = 4 * CHUNK,
    scanner: OnnxScanner | None = None,
) -> tuple[VerifyingReader, io.BytesIO]:
    tee = io.BytesIO()

    async def main() -> VerifyingReader:
        pipe = Pipe(limit=limit)
        reader = VerifyingReader(
            pipe,
            tee,
            sha256=hashlib.sha256(want).hexdigest(),
            size=len(want),
            what="model 'm'",
            scanner=scanner,
        )
        await asyncio.wait_for(
            overlap(pipe, produce(pipe, parts, fail_after), lambda: consume(reader)),  # type: ignore[operator]
            timeout=10,
        )
        return reader

    return asyncio.run(main()), tee


def read_all(reader: VerifyingReader) -> bytes:
    out = b""
    while block := reader.read(8192):
        out += block
    return out


def test_bytes_pass_through_hashed_and_copied() -> None:
    received: list[bytes] = []
    reader, tee = run(chunks(DATA), lambda r: received.append(read_all(r)))
    assert received == [DATA]
    assert tee.getvalue() == DATA
    assert reader.verified and reader.size == len(DATA)


def test_the_writer_waits_for_the_reader_within_the_limit() -> None:
    seen: list[int] = []

    def slow(reader: VerifyingReader) -> None:
        while block := reader.read():
            seen.append(len(block))
            threading.Event().wait(0.001)

    reader, _ = run(chunks(DATA), slow, limit=CHUNK)
    assert sum(seen) == len(DATA) and reader.verified


def test_a_failing_upload_stops_the_fetch_and_is_the_error() -> None:
    def refuse(reader: VerifyingReader) -> None:
        raise RegistryUnavailableError("registry r:1 unreachable: connection refused")

    with pytest.raises(RegistryUnavailableError, match="connection refused"):
        run(chunks(DATA) * 8, refuse, limit=CHUNK)


def test_an_upload_failing_midway_stops_the_fetch() -> None:
    def half(reader: VerifyingReader) -> None:
        reader.read()
        raise RegistryUnavailableError("registry r:1 unreachable: reset")

    with pytest.raises(RegistryUnavailableError, match="reset"):
        run(chunks(DATA) * 8, half, limit=CHUNK)


def test_a_failing_fetch_stops_the_upload_and_is_the_error() -> None:
    ended = threading.Event()

    def upload(reader: VerifyingReader) -> None:
        try:
            read_all(reader)
        finally:
            ended.set()

    with pytest.raises(NotFoundError, match="model 'm'"):
        run(chunks(DATA), upload, fail_after=3)
    assert ended.is_set()


def sending(sent: list[bytes]) -> object:
    def upload(reader: VerifyingReader) -> None:
        while block := reader.read():
            sent.append(block)

    return upload


def test_wrong_bytes_never_reach_the_end() -> None:
    wrong = bytearray(DATA)
    wrong[-1] ^= 1
    sent: list[bytes] = []
    with pytest.raises(DigestMismatchError, match=r"model 'm'.*upload the model again"):
        run(chunks(bytes(wrong)), sending(sent), want=DATA)
    # The last chunk is held back until the check: the registry never gets every byte.
    assert sum(map(len, sent)) < len(DATA)


def _onnx(external: bool) -> bytes:
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(64 * 1024, dtype=np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64 * 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64 * 1024])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        tensor = model.graph.initializer[0]
        external_data_helper.set_external_data(tensor, location="w.bin")
        tensor.ClearField("raw_data")
        # keep the size: pad the doc string so the file is still several chunks long
        model.doc_string = "x" * (256 * 1024)
    return bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("external", "error"),
    [(True, ModelExternalDataError), (False, None)],
)
def test_a_model_that_is_not_whole_never_reaches_the_end(
    external: bool, error: type[Exception] | None
) -> None:
    data = _onnx(external)
    sent: list[bytes] = []
    if error is None:
        reader, _ = run(chunks(data), sending(sent), want=data, scanner=OnnxScanner())
        assert reader.verified and b"".join(sent) == data
        return
    with pytest.raises(error, match="external data"):
        run(chunks(data), sending(sent), want=data, scanner=OnnxScanner())
    assert sum(map(len, sent)) < len(data)


def test_bytes_that_are_not_a_model_never_reach_the_end() -> None:
    sent: list[bytes] = []
    with pytest.raises(InvalidModelError, match="not a well-formed ONNX model"):
        run(chunks(DATA), sending(sent), scanner=OnnxScanner())
    assert sum(map(len, sent)) < len(DATA)


def test_too_many_bytes_are_refused_before_they_are_sent() -> None:
    sent: list[int] = []

    def upload(reader: VerifyingReader) -> None:
        while block := reader.read():
            sent.append(len(block))

    with pytest.raises(DigestMismatchError, match="more than"):
        run(chunks(DATA + b"extra"), upload)
    assert sum(sent) <= len(DATA)


def test_a_short_object_is_refused() -> None:
    with pytest.raises(DigestMismatchError):
        run(chunks(DATA[:-10]), read_all)


def test_pipe_closed_keeps_the_cause() -> None:
    async def main() -> None:
        pipe = Pipe()
        pipe.close(NotFoundError("gone"))
        with pytest.raises(PipeClosed) as err:
            await asyncio.to_thread(pipe.get)
        assert isinstance(err.value.__cause__, NotFoundError)

    asyncio.run(main())
