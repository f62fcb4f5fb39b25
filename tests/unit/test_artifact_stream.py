"""Streaming model bytes from the event loop into an upload thread
(services/registry_push/pipe.py, models.overlap): both sides end whichever fails first,
the first real error surfaces, and wrong bytes never finish an upload."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading

import pytest

from edgepub.services.registry_push.models import overlap
from edgepub.services.registry_push.pipe import Pipe, PipeClosed, VerifyingReader
from edgepub.shared.errors import DigestMismatchError, NotFoundError, RegistryUnavailableError

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
) -> tuple[VerifyingReader, io.BytesIO]:
    tee = io.BytesIO()

    async def main() -> VerifyingReader:
        pipe = Pipe(limit=limit)
        reader = VerifyingReader(
            pipe, tee, sha256=hashlib.sha256(want).hexdigest(), size=len(want), what="model 'm'"
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


def test_wrong_bytes_never_reach_the_end() -> None:
    wrong = bytearray(DATA)
    wrong[-1] ^= 1
    with pytest.raises(DigestMismatchError, match=r"model 'm'.*upload the model again"):
        run(chunks(bytes(wrong)), read_all)


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
