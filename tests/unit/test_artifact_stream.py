"""Streaming model bytes from the event loop into an upload thread
(services/registry_push/pipe.py, cache.overlap): both sides end whichever fails first,
the first real error surfaces, wrong bytes never finish an upload, and a cancelled stream
stops its thread before the cancellation goes on (session.in_thread)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import threading

import numpy as np
import pytest
import requests

from edgepub.services.registry_push.cache import overlap
from edgepub.services.registry_push.pipe import Pipe, PipeClosed, VerifyingReader
from edgepub.services.registry_push.session import (
    PushCancelled,
    StoppableAdapter,
    StopToken,
    Threads,
    in_thread,
)
from edgepub.shared.errors import (
    DigestMismatchError,
    InvalidModelError,
    ModelExternalDataError,
    NotFoundError,
    RegistryUnavailableError,
)
from edgepub.shared.onnx_scan import OnnxScanner
from support.waiting import async_wait_for

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
            overlap(pipe, produce(pipe, parts, fail_after), lambda: consume(reader), Threads()),  # type: ignore[operator]
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
    """The reader takes one chunk at a time, only when the test lets it. Whenever both
    sides have settled (the reader idle, the writer stopped inside ``put``), the bytes in
    the pipe are exactly those ``put`` took minus those ``get`` gave: never more than the
    limit. The writer fills the pipe to its limit, then waits until the reader makes
    room, and every byte arrives in order."""
    limit = 4 * CHUNK  # a whole number of chunks: the pipe fills exactly to its limit
    parts = chunks(DATA)
    assert len(parts) * CHUNK > 2 * limit

    async def main() -> None:
        pipe = Pipe(limit=limit)
        calls = 0  # put() called
        accepted = 0  # bytes put() took
        got: list[bytes] = []  # what the reader took, in order
        gets = 0  # get() called (counted before the call: a get makes room before it returns)
        went_on_at: list[int] = []  # per put: the gets called by the time it returned
        permits = threading.Semaphore(0)
        permitted = 0

        async def writer() -> None:
            nonlocal calls, accepted
            for part in parts:
                calls += 1
                await pipe.put(part)
                accepted += len(part)
                went_on_at.append(gets)
            pipe.close()

        def reader() -> None:
            nonlocal gets
            while permits.acquire(timeout=20):
                gets += 1
                try:
                    chunk = pipe.get()
                except PipeClosed:
                    return
                if not chunk:
                    return
                got.append(chunk)

        def buffered() -> int:
            return accepted - sum(map(len, got))

        def settled() -> bool:
            """The reader has done every read it was allowed, and the writer is done or
            waits inside put() with the pipe at (or past) its limit. On this loop the
            writer runs only between its awaits: a put called and not returned is a put
            waiting."""
            if len(got) != permitted:
                return False
            return write.done() or (calls == len(went_on_at) + 1 and buffered() >= limit)

        read = asyncio.create_task(asyncio.to_thread(reader))
        write = asyncio.create_task(writer())
        try:
            await async_wait_for(settled, 10, "the writer to fill the pipe and wait")
            # Nothing read yet: the pipe took exactly its limit, and the writer waits.
            assert not write.done(), f"the writer handed over all {accepted} bytes unread"
            assert accepted == limit, (accepted, limit)
            while not write.done():
                permitted += 1
                permits.release()
                await async_wait_for(settled, 10, f"read {permitted}, the writer waiting again")
                assert buffered() <= limit, f"{buffered()} bytes in a pipe limited to {limit}"
            # Each put past the limit went on only after a get had made room for it.
            full = limit // CHUNK
            assert went_on_at[:full] == [0] * full
            assert all(at >= i - full + 1 for i, at in enumerate(went_on_at) if i >= full), (
                went_on_at
            )
            for _ in range(len(parts) + 1):  # the rest, and the end
                permits.release()
            await asyncio.wait_for(read, 10)
            assert b"".join(got) == DATA
        finally:
            pipe.close(RuntimeError("the test ended"))
            for _ in range(len(parts) + 1):
                permits.release()

    asyncio.run(asyncio.wait_for(main(), timeout=30))


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


# --- cancellation: no thread outlives the stream --------------------------------------


def test_a_cancelled_stream_stops_its_upload_thread_before_the_cancellation_goes_on() -> None:
    """The fetch has ended (every byte is in the pipe) and the thread is still sending
    when the push is cancelled: the thread stops at its next chunk, and only then does
    the cancellation reach the caller."""
    sending = threading.Event()
    ended = threading.Event()
    sent: list[int] = []

    def upload(reader: VerifyingReader, stop: StopToken) -> None:
        try:
            while block := reader.read():
                stop.check()  # what the push session's HTTP adapter does per body chunk
                sent.append(len(block))
                sending.set()
                threading.Event().wait(0.01)  # a slow registry
        finally:
            ended.set()

    async def main() -> None:
        pipe = Pipe(limit=len(DATA) * 2)
        threads = Threads()
        reader = VerifyingReader(
            pipe, io.BytesIO(), sha256=hashlib.sha256(DATA).hexdigest(), size=len(DATA), what="m"
        )
        task = asyncio.create_task(
            overlap(
                pipe, produce(pipe, chunks(DATA)), lambda: upload(reader, threads.stop), threads
            )
        )
        await asyncio.to_thread(sending.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set(), "the upload thread was still running after the cancellation"
        assert threads.stop.is_set()

    asyncio.run(asyncio.wait_for(main(), timeout=20))
    assert 0 < sum(sent) < len(DATA)


def test_a_cancelled_fetch_unblocks_a_thread_waiting_for_bytes() -> None:
    ended = threading.Event()

    def upload(reader: VerifyingReader) -> None:
        try:
            read_all(reader)
        finally:
            ended.set()

    async def never(pipe: Pipe) -> None:
        await pipe.put(DATA[:CHUNK])
        await asyncio.Event().wait()  # the object store goes silent

    async def main() -> None:
        pipe = Pipe()
        reader = VerifyingReader(
            pipe, io.BytesIO(), sha256=hashlib.sha256(DATA).hexdigest(), size=len(DATA), what="m"
        )
        task = asyncio.create_task(overlap(pipe, never(pipe), lambda: upload(reader), Threads()))
        # the thread has the first chunk and waits for the next
        await async_wait_for(lambda: reader.size > 0, 10, "the first chunk read")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()

    asyncio.run(asyncio.wait_for(main(), timeout=20))


def test_in_thread_waits_for_the_thread_then_stays_cancelled() -> None:
    started = threading.Event()
    stopped_by: list[str] = []

    def work(stop: StopToken) -> None:
        started.set()
        while True:
            try:
                stop.check()
            except PushCancelled:
                stopped_by.append("token")
                raise
            threading.Event().wait(0.005)

    async def main() -> None:
        stop = StopToken()
        task = asyncio.create_task(in_thread(stop, work, stop, wait_s=10))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stopped_by == ["token"]  # ended before the cancellation reached us

    asyncio.run(asyncio.wait_for(main(), timeout=20))


class _Body:
    """A streamed request body that cancels the push after its third chunk."""

    def __init__(self, size: int, stop: StopToken) -> None:
        self._left = size
        self._size = size
        self._stop = stop
        self.reads = 0

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 3:
            self._stop.set()
        take = min(self._left, 16384 if n < 0 else n)
        self._left -= take
        return b"x" * take


def test_a_stopped_session_sends_no_more_of_the_body_and_no_more_requests() -> None:
    received: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def drain() -> None:
            conn, _ = server.accept()
            with conn:
                total = 0
                while data := conn.recv(65536):
                    total += len(data)
                received.append(total)

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        stop = StopToken()
        session = requests.Session()
        session.mount("http://", StoppableAdapter(stop))
        body = _Body(4 << 20, stop)
        with pytest.raises(PushCancelled):
            session.put(f"http://127.0.0.1:{port}/v2/x/blobs/uploads/1", data=body, timeout=5)
        with pytest.raises(PushCancelled):  # nothing new is sent once stopped
            session.get(f"http://127.0.0.1:{port}/v2/", timeout=5)
        session.close()
        t.join(10)
    assert body.reads == 3
    assert received and received[0] < 4 << 20


def test_a_limit_that_is_not_whole_chunks_is_never_passed() -> None:
    """A chunk goes in only if it fits: with room for 3.5 chunks the 4th waits."""

    async def main() -> None:
        pipe = Pipe(limit=3 * CHUNK + CHUNK // 2)
        for _ in range(3):
            await pipe.put(b"x" * CHUNK)
        fourth = asyncio.create_task(pipe.put(b"y" * CHUNK))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not fourth.done()  # 4 chunks would be past the limit
        assert await asyncio.to_thread(pipe.get) == b"x" * CHUNK
        await asyncio.wait_for(fourth, 5)

    asyncio.run(main())
