"""The pulled pipeline on the persistent volume, replaced only whole.

Layout under ``<persist>/pipelines``::

    store/<manifest digest hex>/   one complete pull: source.json, manifest.json,
                                   definition.json, models/<file name>
    current -> store/<hex>         symlink, switched with an atomic rename
    .staging-*/                    a pull in progress (removed on failure and at start)

A pull writes a staging directory, verifies it, renames it into ``store`` and only then
switches ``current``; a refused or interrupted pull leaves the served pipeline untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import msgspec

from edgepub.shared.errors import DigestMismatchError
from edgepub.shared.schemas import PipelineDefinition, definition_decoder

KEEP = 2  # the current pull and the one before it
_CHUNK = 1 << 20


class CacheSource(msgspec.Struct, frozen=True, kw_only=True):
    pipeline_url: str
    manifest_digest: str
    pulled_at: str


class CachedPipeline(msgspec.Struct, frozen=True, kw_only=True):
    path: Path
    source: CacheSource
    definition: PipelineDefinition

    @property
    def models_dir(self) -> Path:
        return self.path / "models"


def safe_file_name(name: str) -> str:
    """A layer title used as a file name must stay inside the models directory."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DigestMismatchError(f"layer title {name!r} is not a plain file name; refused")
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush a pull to disk before it becomes ``current`` (edges lose power)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


class PipelineCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.current_link = root / "current"

    def prepare(self) -> None:
        """Create the layout and remove what interrupted pulls left."""
        self.store.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def current(self) -> CachedPipeline | None:
        """The pipeline ``current`` points at (None when there is none yet)."""
        try:
            target = self.current_link.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            return None
        return self.read(target)

    def find(self, pipeline_url: str) -> CachedPipeline | None:
        """The newest complete pull of ``pipeline_url`` in the store (``current`` first):
        an edge assigned back to a pipeline it ran before serves it without the registry."""
        try:
            current = self.current()
        except (OSError, msgspec.ValidationError, msgspec.DecodeError):
            current = None
        if current is not None and current.source.pipeline_url == pipeline_url:
            return current
        try:
            entries = sorted(self.store.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        except FileNotFoundError:
            return None
        for entry in entries:
            try:
                found = self.read(entry)
            except (OSError, msgspec.ValidationError, msgspec.DecodeError):
                continue  # a pull being pruned, or a damaged one: never served
            if found.source.pipeline_url == pipeline_url:
                return found
        return None

    def read(self, path: Path) -> CachedPipeline:
        source = msgspec.json.decode((path / "source.json").read_bytes(), type=CacheSource)
        definition = definition_decoder.decode((path / "definition.json").read_bytes())
        return CachedPipeline(path=path, source=source, definition=definition)

    def verify(self, cached: CachedPipeline) -> None:
        """Every model file is there with the digest the definition names."""
        for step in cached.definition.steps:
            path = cached.models_dir / safe_file_name(step.file_name)
            if not path.is_file():
                raise DigestMismatchError(f"cached model file {path} is missing")
            got = sha256_file(path)
            if got != step.sha256:
                raise DigestMismatchError(
                    f"cached model file {path} has sha256:{got}; the pipeline names "
                    f"sha256:{step.sha256}"
                )

    def commit(self, staging: Path, manifest_digest: str) -> Path:
        """Move a complete staging directory into the store and point ``current`` at it."""
        final = self.store / manifest_digest.removeprefix("sha256:")
        if final.exists():  # already pulled once (complete: only whole pulls are renamed)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            _fsync_tree(staging)
            os.rename(staging, final)
            _fsync_dir(self.store)
        self.select(final)
        return final

    def select(self, final: Path) -> None:
        """Point ``current`` at a complete pull in the store, atomically."""
        os.utime(final)  # the newest for pruning: the served pull is never the one removed
        link_tmp = self.root / f".current-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            link_tmp.unlink()
        link_tmp.symlink_to(final.relative_to(self.root))
        os.replace(link_tmp, self.current_link)
        _fsync_dir(self.root)
        self._prune(final)

    def _prune(self, keep: Path) -> None:
        entries = sorted(
            (p for p in self.store.iterdir() if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        kept = {keep}
        for entry in entries:
            if len(kept) >= KEEP:
                if entry not in kept:
                    shutil.rmtree(entry, ignore_errors=True)
            else:
                kept.add(entry)
