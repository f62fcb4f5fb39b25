"""What edgepub puts in an OCI registry, as plain data: media types, references, manifests.

Pure: no I/O. ``shared/oci.py`` moves these bytes; the registry-push service and the edge
agent agree on them through this module.

Media types (documented choices):

- pipeline config blob: ``application/vnd.edgepub.pipeline.config.v1+json`` (the JSON
  ``PipelineDefinition``); the manifest's ``artifactType`` is
  ``application/vnd.edgepub.pipeline.v1`` so OCI 1.1 tools can filter on it.
- model layers: ``application/vnd.edgepub.model.<runtime>.v1`` (``...model.onnx.v1`` for
  ONNX). No registered media type for ONNX exists; a vendor type in our own tree says exactly
  what the bytes are and leaves room for other runtimes. Each layer carries
  ``org.opencontainers.image.title`` = the model's file name.
- Helm chart: Helm's own types (config ``application/vnd.cncf.helm.config.v1+json``, one layer
  ``application/vnd.cncf.helm.chart.content.v1.tar+gzip``) and no ``artifactType``, exactly as
  ``helm push`` writes them, so ``helm pull oci://...`` works.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import msgspec

from .errors import InvalidNameError
from .schemas import encode_json

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_DESCRIPTION = "org.opencontainers.image.description"

PIPELINE_ARTIFACT_TYPE = "application/vnd.edgepub.pipeline.v1"
PIPELINE_CONFIG_MEDIA_TYPE = "application/vnd.edgepub.pipeline.config.v1+json"
ONNX_MODEL_MEDIA_TYPE = "application/vnd.edgepub.model.onnx.v1"

HELM_CONFIG_MEDIA_TYPE = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART_MEDIA_TYPE = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"

CHART_VERSION_PREFIX = "0.0.1-"

# The grammar of github.com/distribution/reference.
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_RE = re.compile(_HOST)  # every use is fullmatch: "$" would allow a "\n"
_COMPONENT_RE = re.compile(_COMPONENT)
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_NAME = 255
_EXPECTED = "expected host[:port]/path[:tag][@sha256:<64 hex>]"


class Reference(msgspec.Struct, frozen=True, kw_only=True):
    """``registry/repository[:tag][@digest]``; at least one of tag and digest is set."""

    registry: str  # host[:port]
    repository: str  # path inside the registry: "edgepub/pipelines/p1"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when known, else the tag."""
        return self.digest or self.tag or ""

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _refuse(text: str, why: str) -> InvalidNameError:
    return InvalidNameError(f"{text!r} is not an OCI reference: {why}; {_EXPECTED}")


def parse_reference(text: str) -> Reference:
    """Parse ``host[:port]/a/b:tag``, ``...@sha256:...`` or both; ``oci://`` is allowed.

    The first path element must be a registry host (it has a dot or a port, or is
    ``localhost``): edgepub never guesses Docker Hub.
    """
    rest = text.removeprefix("oci://")
    digest: str | None = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise _refuse(text, f"bad digest {digest!r}")
        if digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
            raise _refuse(text, "a sha256 digest is 64 lowercase hex digits")
    if "/" not in rest:
        raise _refuse(text, "no registry host")
    registry, path = rest.split("/", 1)
    if not _HOST_RE.fullmatch(registry) or not (
        "." in registry or ":" in registry or registry == "localhost"
    ):
        raise _refuse(text, f"{registry!r} is not a registry host[:port]")
    tag: str | None = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise _refuse(text, f"bad tag {tag!r}")
    if not _REPOSITORY_RE.fullmatch(path):
        raise _refuse(text, f"bad repository path {path!r} (lowercase letters, digits, ._-)")
    if len(f"{registry}/{path}") > _MAX_NAME:
        raise _refuse(text, f"the name is longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        raise _refuse(text, "it has neither a tag nor a digest")
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def is_sha256(digest: str) -> bool:
    """``sha256:`` and 64 lowercase hex digits."""
    return bool(_SHA256_RE.fullmatch(digest))


def check_repository(repository: str) -> str:
    if not _REPOSITORY_RE.fullmatch(repository):
        raise InvalidNameError(
            f"{repository!r} cannot be an OCI repository path: use lowercase letters, digits, "
            "'.', '_', '-' and '/' between parts"
        )
    return repository


def check_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise InvalidNameError(
            f"{tag!r} cannot be an OCI tag: letters, digits, '_', '.', '-', at most 128"
        )
    return tag


def _component(what: str, value: str) -> str:
    if not _COMPONENT_RE.fullmatch(value):
        raise InvalidNameError(
            f"{what} {value!r} cannot be part of an OCI repository path: use lowercase "
            "letters and digits, separated by single '.', '_' or '-'"
        )
    return value


def pipeline_repository(repository: str, pipeline: str) -> str:
    """``<repository>/pipelines/<pipeline>``: where a pipeline's versions are tagged."""
    return f"{check_repository(repository)}/pipelines/{_component('pipeline name', pipeline)}"


def chart_repository(repository: str, pipeline: str) -> str:
    """``<repository>/charts/<pipeline>``: the pipeline's Helm chart."""
    return f"{check_repository(repository)}/charts/{_component('pipeline name', pipeline)}"


def chart_version(pipeline_version_name: str) -> str:
    """``0.0.1-<version uuid>``: valid SemVer (a pre-release), as the seed shows it."""
    return check_tag(f"{CHART_VERSION_PREFIX}{pipeline_version_name}")


def pipeline_url(registry: str, repository: str, pipeline: str, version: str) -> str:
    """``<registry>/<repository>/pipelines/<pipeline>:<version uuid>`` (PIPELINE_URL)."""
    return f"{registry}/{pipeline_repository(repository, pipeline)}:{check_tag(version)}"


def chart_url(registry: str, repository: str, pipeline: str) -> str:
    """``oci://<registry>/<repository>/charts/<pipeline>``: what ``helm pull`` takes."""
    return f"oci://{registry}/{chart_repository(repository, pipeline)}"


def chart_reference(registry: str, repository: str, digest: str) -> str:
    """``<registry>/<repository>/charts@<chart manifest digest>``, the seed's "reference"."""
    return f"{registry}/{check_repository(repository)}/charts@{digest}"


def model_media_type(runtime: str) -> str:
    if runtime == "onnx":
        return ONNX_MODEL_MEDIA_TYPE
    return f"application/vnd.edgepub.model.{_component('runtime', runtime)}.v1"


# --- manifests --------------------------------------------------------------------------


class Descriptor(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None


class Manifest(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    schema_version: int
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


def build_manifest(
    config: Descriptor,
    layers: Sequence[Descriptor],
    *,
    artifact_type: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The manifest's exact bytes: sorted keys, no whitespace, no timestamps.

    Equal inputs give equal bytes, hence an equal digest: pushing twice changes nothing.
    """
    manifest = Manifest(
        schema_version=2,
        media_type=OCI_MANIFEST,
        config=config,
        layers=tuple(layers),
        artifact_type=artifact_type,
        annotations=dict(annotations) if annotations else None,
    )
    return encode_json(manifest)


manifest_decoder = msgspec.json.Decoder(Manifest)


def layer_by_title(manifest: Manifest, title: str) -> Descriptor:
    for layer in manifest.layers:
        if (layer.annotations or {}).get(ANNOTATION_TITLE) == title:
            return layer
    raise InvalidNameError(f"the artifact has no layer titled {title!r}")
