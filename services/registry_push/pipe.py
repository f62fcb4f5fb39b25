"""Bytes from the event loop to a worker thread that reads them like a file.

Model bytes arrive from NATS on the event loop while ``requests`` sends them to the
registry from a thread; the pipe lets both run at once, holding at most ``limit`` bytes.
The reader side hashes what passes and copies it into the cache file, and refuses to
finish (raises before the last bytes) if the bytes are not the model's, or not a model an
edge can load on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from typing import IO

from edgepub.shared.errors import DigestMismatchError, InvalidModelError, ModelExternalDataError
from edgepub.shared.onnx_scan import OnnxScanner, Scan, describe

_EOF = b""


class PipeClosed(Exception):
    """The other side is gone; the reason is the other side's own error."""


class Pipe:
    def __init__(self, limit: int = 32 << 20) -> None:
        self._loop = asyncio.get_running_loop()
        self._q: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._buffered = 0
        self._limit = limit
        self._room = asyncio.Event()
        self._abandoned = False

    # --- event loop side ---------------------------------------------------------------

    async def put(self, chunk: bytes) -> None:
        """Hand over ``chunk``; waits until it fits within ``limit`` unread bytes (a chunk
        larger than the limit alone goes through once the pipe is empty)."""
        while True:
            with self._lock:
                if self._abandoned:
                    raise PipeClosed("the reader stopped")
                if self._buffered + len(chunk) <= self._limit or self._buffered == 0:
                    self._buffered += len(chunk)
                    break
                self._room.clear()
            await self._room.wait()
        self._q.put(chunk)

    def close(self, error: BaseException | None = None) -> None:
        """End of data, or the writer's failure (the reader raises PipeClosed from it)."""
        self._q.put(_EOF if error is None else error)

    # --- thread side -------------------------------------------------------------------

    def get(self) -> bytes:
        item = self._q.get()
        if isinstance(item, BaseException):
            self._q.put(item)
            raise PipeClosed("the writer failed") from item
        if item == _EOF:
            self._q.put(item)
            return item
        with self._lock:
            self._buffered -= len(item)
        self._loop.call_soon_threadsafe(self._room.set)
        return item

    def abandon(self) -> None:
        """The reader is done for good (finished or failed): unblock the writer."""
        with self._lock:
            self._abandoned = True
        self._loop.call_soon_threadsafe(self._room.set)


class VerifyingReader:
    """``read()`` for the upload thread: chunks from the pipe, hashed and copied to ``tee``
    (and, with a ``scanner``, checked as an ONNX file that stands alone).

    Each chunk is handed on only once the next one has arrived, so the last bytes are sent
    after every check has passed: a wrong size or sha256 (DigestMismatchError), or a model
    that is not whole in itself (ModelExternalDataError, InvalidModelError) raises instead,
    and the registry, one byte short of its Content-Length, never stores the blob.
    """

    def __init__(
        self,
        pipe: Pipe,
        tee: IO[bytes],
        *,
        sha256: str,
        size: int,
        what: str,
        scanner: OnnxScanner | None = None,
    ) -> None:
        self._pipe = pipe
        self._tee = tee
        self._want = (sha256, size)
        self._what = what
        self._scanner = scanner
        self._sha = hashlib.sha256()
        self._held: bytes | None = None  # received, checked into the hash, not yet handed on
        self.size = 0
        self.verified = False

    def read(self, n: int = -1, /) -> bytes:
        if self._held is None:  # the first call
            self._held = self._take()
            if not self._held:
                self._finish()
        if not self._held:
            return _EOF
        following = self._take()
        if not following:
            self._finish()  # raises before the last bytes go out
        out, self._held = self._held, following
        return out

    def _take(self) -> bytes:
        chunk = self._pipe.get()
        if chunk:
            if self.size + len(chunk) > self._want[1]:
                # Never send more than the Content-Length the registry was promised.
                raise DigestMismatchError(
                    f"{self._what}: the object store holds more than {self._want[1]} bytes; "
                    "upload the model again"
                )
            self._sha.update(chunk)
            self._tee.write(chunk)
            if self._scanner is not None:
                self._scanner.feed(chunk)
            self.size += len(chunk)
        return chunk

    def _finish(self) -> None:
        got = (self._sha.hexdigest(), self.size)
        if got != self._want:
            raise DigestMismatchError(
                f"{self._what}: the object store holds {got[1]} bytes with sha256 {got[0]}; "
                "upload the model again"
            )
        if self._scanner is not None:
            refuse_unless_standalone(self._scanner.close(), self._what)
        self.verified = True


def refuse_unless_standalone(scan: Scan, what: str) -> None:
    """Raise unless ``scan`` found a well-formed ONNX model with all its tensors inside."""
    if scan.external_count:
        raise ModelExternalDataError(describe(scan, what))
    if scan.problem is not None:
        raise InvalidModelError(describe(scan, what))
