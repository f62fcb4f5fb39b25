"""Pull a pipeline artifact into the cache, verifying every digest (blocking: run it in a
thread). The log lines tell the seed's start-up story: fetching manifest and config, each
model layer, fetched."""

from __future__ import annotations

import contextlib
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from edgepub.shared import artifact
from edgepub.shared.errors import (
    DigestMismatchError,
    InvalidModelError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
)
from edgepub.shared.schemas import PipelineDefinition, definition_decoder, encode_json
from edgepub.shared.settings import RegistrySettings

from .assignment import reference_for
from .cache import CachedPipeline, CacheSource, PipelineCache, safe_file_name
from .config import AgentConfig


class Registry(Protocol):
    """What the puller needs of ``edgepub.shared.oci.RegistryClient``."""

    def manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], str]: ...

    def blob(self, repository: str, digest: str) -> bytes: ...

    def blob_to_file(self, repository: str, digest: str, path: Path) -> None: ...


class NotAPipelineError(RegistryError):
    code = "not_a_pipeline"


def _manifest(raw: dict[str, Any], url: str) -> artifact.Manifest:
    try:
        manifest = msgspec.convert(raw, artifact.Manifest)
    except msgspec.ValidationError as exc:
        raise NotAPipelineError(f"{url} is not an OCI image manifest: {exc}") from None
    if manifest.config.media_type != artifact.PIPELINE_CONFIG_MEDIA_TYPE:
        raise NotAPipelineError(
            f"{url} is not an edgepub pipeline: its config is {manifest.config.media_type!r}, "
            f"not {artifact.PIPELINE_CONFIG_MEDIA_TYPE!r}"
        )
    return manifest


def _definition(config: bytes, url: str) -> PipelineDefinition:
    try:
        return definition_decoder.decode(config)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise NotAPipelineError(
            f"the config of {url} is not a pipeline definition: {exc}"
        ) from None


def _layer(
    manifest: artifact.Manifest, file_name: str, sha256: str, url: str
) -> artifact.Descriptor:
    for layer in manifest.layers:
        if (layer.annotations or {}).get(artifact.ANNOTATION_TITLE) == file_name:
            if layer.digest != f"sha256:{sha256}":
                raise DigestMismatchError(
                    f"{url}: layer {file_name!r} has digest {layer.digest}; the pipeline "
                    f"definition names sha256:{sha256}"
                )
            return layer
    raise NotAPipelineError(f"{url} has no layer titled {file_name!r}")


def _up_to_date(cache: PipelineCache, url: str, digest: str) -> CachedPipeline | None:
    """The cached pull of ``url`` at ``digest``, made ``current`` (None: download it)."""
    found = cache.find(url)
    if found is None or found.source.manifest_digest != digest:
        return None
    if found.path.resolve() != cache.current_link.resolve():
        cache.select(found.path)
    return found


def pull(
    client: Registry, reference: artifact.Reference, url: str, cache: PipelineCache, log: Any
) -> tuple[CachedPipeline, bool]:
    """(the cached pipeline for ``url``, whether anything was downloaded).

    Raises the registry's errors, ``DigestMismatchError`` or ``NotAPipelineError``; in every
    failure the cache's ``current`` pipeline is left as it was.
    """
    repo = reference.repository
    log.info("fetching_manifest_and_config", pipeline_url=url)
    raw, digest = client.manifest(repo, reference.reference)
    if reference.digest and digest != reference.digest:
        raise DigestMismatchError(f"{url}: the manifest has digest {digest}")
    existing = _up_to_date(cache, url, digest)
    if existing is not None:
        log.info("pipeline_up_to_date", digest=digest)
        return existing, False
    manifest = _manifest(raw, url)
    config = client.blob(repo, manifest.config.digest)
    definition = _definition(config, url)
    staging = cache.staging()
    try:
        log.info("fetching_model_layers", layers=len(manifest.layers))
        fetched: set[str] = set()
        for step in definition.steps:
            name = safe_file_name(step.file_name)
            if name in fetched:  # two steps running one file share its layer
                continue
            fetched.add(name)
            layer = _layer(manifest, name, step.sha256, url)
            log.info(
                "model_layer",
                digest=layer.digest,
                filename=name,
                name=step.model_name,
                type="model",
                runtime=step.runtime,
                version=step.model_version,
            )
            client.blob_to_file(repo, layer.digest, staging / "models" / name)
        source = CacheSource(
            pipeline_url=url, manifest_digest=digest, pulled_at=datetime.now(UTC).isoformat()
        )
        (staging / "source.json").write_bytes(encode_json(source))
        (staging / "manifest.json").write_bytes(encode_json(raw))
        (staging / "definition.json").write_bytes(config)
        final = cache.commit(staging, digest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise
    log.info("fetched", digest=digest, models=len(definition.steps))
    return cache.read(final), True


def pull_url(
    config: AgentConfig, url: str, cache: PipelineCache, log: Any
) -> tuple[CachedPipeline, bool]:
    """``pull`` of PIPELINE_URL or of an assigned URL on the same registry, with the
    agent's OCI credentials (blocking)."""
    from edgepub.shared.oci import RegistryClient

    registry = config.reference.registry
    reference = config.reference if url == config.pipeline_url else reference_for(url, registry)
    settings = RegistrySettings(
        registry=registry,
        username=config.oci_username,
        password=config.oci_password,
        insecure=config.insecure,
    )
    client = RegistryClient(settings, timeout_s=30.0)
    try:
        return pull(client, reference, url, cache, log)
    finally:
        client.close()


def failure_reason(exc: Exception, oci_username: str | None) -> str:
    """A failed pull, in words an operator can act on."""
    if isinstance(exc, RegistryAuthError):
        return (
            f"the registry refused the credentials of OCI_USERNAME={oci_username!r}: check "
            "OCI_USERNAME and OCI_PASSWORD"
        )
    if isinstance(exc, RegistryUnavailableError):
        return f"registry unreachable: {exc}"
    if isinstance(exc, DigestMismatchError):
        return f"pull refused, digest mismatch: {exc}"
    if isinstance(exc, InvalidModelError):
        return f"load failed: {exc}"
    return f"pull failed: {exc}"
