"""registry-push's model cache: files from the JetStream Object Store, into the registry and
a bounded local directory.

The object's name is the model's sha256 hex. ``stream`` reads the object and hands each
chunk at once to a consumer running in a thread (the registry upload), while the same
bytes are hashed, checked as an ONNX model that stands alone, and written to the cache; so
fetching and uploading overlap instead of adding up. A file enters the cache only whole and
verified (temporary name, sha256 and size checked, then renamed); a cached file is reused
after the same checks.

The cache only saves reading the object store again, so it is kept small: at most
``max_bytes`` (``EDGEPUB_CACHE_MAX_BYTES``), least recently used whole files evicted first,
never a file a push is using. The directory is 0700 and every file 0600: models are the
users' property.

The object is read straight from its chunk subject with an ordered consumer
(``shared/objects.read``, what ``ObjectStore.get`` does inside): measured 0.33 s for
50 MB, against 1.28 s for ``get(writeinto=...)``, which hops to an executor for every
128 KiB chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import ObjectNotFoundError

from edgepub.shared import objects, subjects
from edgepub.shared.errors import DigestMismatchError, NotFoundError
from edgepub.shared.onnx_scan import OnnxScanner, scan_file
from edgepub.shared.schemas import ModelVersion

from .pipe import Pipe, PipeClosed, VerifyingReader, refuse_unless_standalone
from .session import StopToken, Threads, decisive

log = structlog.get_logger("edgepub.registry_push.cache")

_CHUNK = 1 << 20
STALE_PART_S = 3600.0


def describe(model: ModelVersion) -> str:
    return (
        f"model '{model.name}' version {model.version} ({model.file_name}, sha256 {model.sha256})"
    )


def file_matches(path: Path, model: ModelVersion, stop: StopToken | None = None) -> bool:
    """True when ``path`` holds exactly the model's bytes (size, then sha256); stops at
    the next chunk once ``stop`` is set."""
    try:
        if path.stat().st_size != model.size:
            return False
    except FileNotFoundError:
        return False
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            if stop is not None:
                stop.check()
            h.update(chunk)
    return h.hexdigest() == model.sha256


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (made, or tightened, to 0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


class CacheEntry(msgspec.Struct, frozen=True):
    name: str  # the sha256
    size: int
    used_at: float  # mtime: set when the file is stored or reused


def to_evict(entries: Iterable[CacheEntry], max_bytes: int, in_use: set[str]) -> list[str]:
    """Which files to remove so the rest fit in ``max_bytes``: least recently used first,
    never one in use (pure)."""
    entries = list(entries)
    total = sum(e.size for e in entries)
    out: list[str] = []
    for entry in sorted(entries, key=lambda e: (e.used_at, e.name)):
        if total <= max_bytes:
            break
        if entry.name in in_use:
            continue
        out.append(entry.name)
        total -= entry.size
    return out


class ModelCache:
    def __init__(self, js: JetStreamContext, root: Path, max_bytes: int) -> None:
        self._js = js
        self.root = private_dir(root)
        self.max_bytes = max_bytes
        self._in_use: dict[str, int] = {}

    def path(self, model: ModelVersion) -> Path:
        return self.root / model.sha256

    async def cached(self, model: ModelVersion, threads: Threads) -> Path | None:
        """The cached file of ``model`` if it holds exactly its bytes (marked as just used),
        after checking it is an ONNX model whole in itself (raises otherwise)."""
        path = self.path(model)
        if not await threads.call(file_matches, path, model, threads.stop):
            return None
        scan = await threads.call(scan_file, path)
        refuse_unless_standalone(scan, describe(model))
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return path

    @contextlib.asynccontextmanager
    async def using(self, models: Iterable[ModelVersion]) -> AsyncIterator[None]:
        """While this lasts, the models' files are not evicted; afterwards the cache is
        trimmed to its bound."""
        names = [m.sha256 for m in models]
        for name in names:
            self._in_use[name] = self._in_use.get(name, 0) + 1
        try:
            yield
        finally:
            for name in names:
                self._in_use[name] -= 1
                if not self._in_use[name]:
                    del self._in_use[name]
            await asyncio.to_thread(self.trim)

    def entries(self) -> list[CacheEntry]:
        out: list[CacheEntry] = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue  # a temporary file being written (sweep removes stale ones)
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                out.append(CacheEntry(name=path.name, size=st.st_size, used_at=st.st_mtime))
        return out

    def trim(self) -> list[str]:
        """Evict least recently used files until the cache fits ``max_bytes``."""
        evicted = to_evict(self.entries(), self.max_bytes, set(self._in_use))
        for name in evicted:
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        if evicted:
            log.info("cache_evicted", files=len(evicted), max_bytes=self.max_bytes)
        return evicted

    def sweep(self, older_than_s: float = STALE_PART_S) -> int:
        """Remove temporary files a killed process left behind; tighten file modes left
        looser by earlier versions."""
        removed = 0
        cutoff = time.time() - older_than_s
        for part in self.root.glob(".*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
        for path in self.root.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mode & 0o077:
                    path.chmod(0o600)
        return removed

    async def stream(
        self, model: ModelVersion, consume: Callable[[VerifyingReader], None], threads: Threads
    ) -> Path:
        """Read ``model`` from the object store into ``consume`` (run in one of
        ``threads``) and the cache at once. NotFoundError if the object store lacks it;
        DigestMismatchError if its bytes are not the model's; ModelExternalDataError /
        InvalidModelError if it is not an ONNX model whole in itself; otherwise
        ``consume``'s own errors."""
        started = time.monotonic()
        # mkstemp: 0600, and a name no other writer can take.
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{model.sha256}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as tee:
                pipe = Pipe()
                reader = VerifyingReader(
                    pipe,
                    tee,
                    sha256=model.sha256,
                    size=model.size,
                    what=describe(model),
                    scanner=OnnxScanner(),
                )
                await overlap(pipe, self._produce(model, pipe), lambda: consume(reader), threads)
            if not reader.verified:
                raise RuntimeError(f"{describe(model)}: the consumer stopped before the end")
            os.replace(tmp, self.path(model))  # os.replace keeps mkstemp's 0600
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        log.info(
            "model_streamed",
            model=model.name,
            sha256=model.sha256,
            size=model.size,
            seconds=round(time.monotonic() - started, 3),
        )
        return self.path(model)

    async def require(self, model: ModelVersion) -> ObjectInfo:
        """The object store's entry for ``model``, or NotFoundError saying what to do."""
        store = await self._js.object_store(subjects.OBJECT_STORE_MODELS)
        try:
            info = await store.get_info(model.sha256)
        except ObjectNotFoundError:
            raise NotFoundError(
                f"{describe(model)} is not in the object store "
                f"'{subjects.OBJECT_STORE_MODELS}'; upload it again with "
                f"client.upload_model('{model.name}', path)"
            ) from None
        if info.is_link() or not info.nuid:
            raise DigestMismatchError(f"{describe(model)}: the object store entry is not a file")
        return info

    async def _produce(self, model: ModelVersion, pipe: Pipe) -> None:
        info = await self.require(model)
        async for chunk in objects.read(self._js, info):
            await pipe.put(chunk)


async def overlap(
    pipe: Pipe,
    produce: Coroutine[Any, Any, None],
    consume: Callable[[], None],
    threads: Threads,
) -> None:
    """Run the producer coroutine here and ``consume`` in a thread, until both end.

    Whichever fails first, the other is told (the pipe is closed or abandoned; a consumer
    cancelled meanwhile has its thread stopped and waited for) so that neither waits
    forever and no thread outlives the call; the first real error is raised.
    """

    def consume_then_abandon() -> None:
        try:
            consume()
        finally:
            pipe.abandon()

    async def producer() -> None:
        try:
            await produce
        except PipeClosed:
            return  # the consumer stopped; its error says why
        except BaseException as exc:
            pipe.close(exc)  # the reader raises PipeClosed from it
            raise
        pipe.close()

    async def consumer() -> None:
        try:
            await threads.call(consume_then_abandon)
        except PipeClosed as exc:
            raise (exc.__cause__ or exc) from None

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(producer())
            tg.create_task(consumer())
    except BaseExceptionGroup as group:
        raise decisive(group) from None
