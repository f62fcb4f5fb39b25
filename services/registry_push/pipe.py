"""Bytes from the event loop to a worker thread that reads them like a file.

Model bytes arrive from NATS on the event loop while ``requests`` sends them to the
registry from a thread; the pipe lets both run at once, holding at most ``limit`` bytes.
The reader side hashes what passes and copies it into the cache file, and refuses to
finish (raises at end of file) if the bytes are not the model's.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from typing import IO

from edgepub.shared.errors import DigestMismatchError

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
        """Hand over ``chunk``; waits while ``limit`` bytes are unread."""
        while True:
            with self._lock:
                if self._abandoned:
                    raise PipeClosed("the reader stopped")
                if self._buffered < self._limit:
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
    """``read()`` for the upload thread: chunks from the pipe, hashed and copied to ``tee``.

    At end of data it checks size and sha256 and raises DigestMismatchError instead of
    reporting the end, so a wrong upload is aborted rather than completed.
    """

    def __init__(self, pipe: Pipe, tee: IO[bytes], *, sha256: str, size: int, what: str) -> None:
        self._pipe = pipe
        self._tee = tee
        self._want = (sha256, size)
        self._what = what
        self._sha = hashlib.sha256()
        self.size = 0
        self.verified = False

    def read(self, n: int = -1, /) -> bytes:
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
            self.size += len(chunk)
            return chunk
        got = (self._sha.hexdigest(), self.size)
        if got != self._want:
            raise DigestMismatchError(
                f"{self._what}: the object store holds {got[1]} bytes with sha256 {got[0]}; "
                "upload the model again"
            )
        self.verified = True
        return _EOF
