"""The one boundary around oras-py: push and pull OCI artifacts; every registry and
``requests`` error becomes an ``edgepub.shared.errors`` error here and nowhere else.

Requests go through ``oci_transport.Transport`` (one attempt, a timeout, credentials up
front; the caller owns retries and deadlines). Manifests are built here with
``artifact.build_manifest``: deterministic bytes, so pushing the same content again gives
the same digest and, when the tag already points at it, sends nothing. Blobs are
HEAD-checked before upload and streamed. Blocking: from async code use ``to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import oras.utils
import requests

from . import artifact
from .errors import DigestMismatchError, RegistryAuthError, RegistryError, RegistryUnavailableError
from .logs import register_secret
from .oci_transport import (
    CHUNK,
    Sized,
    SupportsRead,
    Transport,
    registry_message,
    sha256_bytes,
    sha256_file,
)
from .settings import RegistrySettings

__all__ = [
    "BlobPushed",
    "LayerSource",
    "RegistryClient",
    "RegistryUnreachableError",
    "SupportsRead",
    "sha256_bytes",
    "sha256_file",
]


class LayerSource(msgspec.Struct, frozen=True):
    """One file to push as a layer. ``title`` becomes ``org.opencontainers.image.title``.

    ``digest`` ("sha256:<hex>"), when the caller knows it, saves hashing the file: the
    registry checks the uploaded bytes against it and a mismatch is a DigestMismatchError.
    With ``size`` too, the file is only opened if the registry lacks the blob.
    """

    path: str
    media_type: str
    title: str
    digest: str | None = None
    size: int | None = None  # with ``digest``: the file need not exist if the registry has it


class BlobPushed(msgspec.Struct, frozen=True, kw_only=True):
    """Reported once per blob by ``push_artifact(on_blob=...)``."""

    digest: str
    size: int
    seconds: float
    uploaded: bool  # False: the registry already had it
    kind: str  # "layer" or "config"


class RegistryUnreachableError(RegistryUnavailableError):
    """Unavailable (refused, timed out, 5xx), keeping the bare cause for callers that
    rephrase it ("unreachable for 600 s: <cause>")."""

    def __init__(self, registry: str, cause: str) -> None:
        super().__init__(f"registry {registry} unreachable: {cause}")
        self.registry = registry
        self.cause = cause


class _TagList(msgspec.Struct):
    tags: list[str] | None = None


class RegistryClient:
    """Push and pull artifacts of one registry (``settings.registry``)."""

    def __init__(self, settings: RegistrySettings, *, timeout_s: float = 30.0) -> None:
        register_secret(settings.password)
        self.settings = settings
        self.timeout_s = timeout_s
        self._t = Transport(settings, timeout_s)
        self._base = f"{self._t.prefix}://{settings.registry}"

    @property
    def session(self) -> requests.Session:
        """The keep-alive session every request goes through (tests mount adapters on it)."""
        return self._t.session  # type: ignore[no-any-return]

    def close(self) -> None:
        self.session.close()

    # --- errors, in one place -------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """requests' exceptions -> RegistryUnreachableError naming the registry."""
        try:
            yield
        except requests.exceptions.Timeout as exc:
            raise self._unreachable(f"no answer within {self.timeout_s:g} s ({what})") from exc
        except requests.exceptions.ConnectionError as exc:
            text = str(exc)
            if "refused" in text.lower():
                cause = "connection refused"
            elif "name or service not known" in text.lower() or "nodename" in text.lower():
                cause = "unknown host"
            else:
                cause = f"{type(exc).__name__}: {text[:200]}"
            raise self._unreachable(f"{cause} ({what})") from exc
        except (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:  # the connection broke mid-answer
            raise self._unreachable(f"{type(exc).__name__} ({what})") from exc
        except requests.exceptions.RequestException as exc:  # a bad URL: retrying won't help
            raise RegistryError(
                f"registry {self.settings.registry}: {type(exc).__name__}: {exc} ({what})"
            ) from exc

    def _unreachable(self, cause: str) -> RegistryUnreachableError:
        return RegistryUnreachableError(self.settings.registry, cause)

    def _expect(self, resp: requests.Response, ok: Sequence[int], what: str) -> None:
        code = resp.status_code
        if code in ok:
            return
        reg, user = self.settings.registry, self.settings.username
        if code in (401, 403):
            withheld = self._t.withheld_from
            if user and withheld:
                raise RegistryAuthError(
                    f"registry {reg} sends logins to the token server {withheld}, which is not "
                    f"{reg} itself (or not HTTPS), so edgepub did not send it the credentials "
                    f"for user '{user}' (HTTP {code} on {what}); use a registry that issues its "
                    "own tokens over HTTPS"
                )
            if not user:
                raise RegistryAuthError(
                    f"registry {reg} requires credentials (HTTP {code} on {what}); "
                    "set EDGEPUB_REGISTRY_USERNAME/PASSWORD"
                )
            raise RegistryAuthError(
                f"registry {reg} refused the credentials for user '{user}' (HTTP {code}); "
                "check EDGEPUB_REGISTRY_USERNAME/PASSWORD"
            )
        message = registry_message(resp)
        if code >= 500 or code == 429:
            raise self._unreachable(f"HTTP {code} on {what}: {message}")
        if "DIGEST_INVALID" in message:
            raise DigestMismatchError(
                f"registry {reg} refused {what}: the bytes do not match the digest ({message})"
            )
        raise RegistryError(f"registry {reg} refused {what} (HTTP {code}): {message}")

    def _request(
        self, method: str, path: str, what: str, ok: Sequence[int], **kw: Any
    ) -> requests.Response:
        url = path if path.startswith("http") else f"{self._base}{path}"
        with self._errors(what):
            resp = self._t.do_request(url, method, **kw)
        if not kw.get("stream"):
            self._expect(resp, ok, what)
        return resp

    # --- reading --------------------------------------------------------------------------

    def check(self) -> None:
        """GET /v2/: RegistryAuthError if the credentials are refused,
        RegistryUnavailableError if it cannot be reached."""
        self._request("GET", "/v2/", "GET /v2/", (200,))

    def tag_digest(self, repository: str, tag: str) -> str | None:
        """The digest ``tag`` points at, or None if there is no such tag."""
        artifact.check_repository(repository)
        what = f"HEAD {repository}:{tag}"
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{artifact.check_tag(tag)}",
            what,
            (200, 404),
            headers={"Accept": ", ".join(artifact.MANIFEST_ACCEPT)},
        )
        if resp.status_code == 404:
            return None
        return resp.headers.get("Docker-Content-Digest")

    def tags(self, repository: str) -> list[str]:
        artifact.check_repository(repository)
        resp = self._request(
            "GET", f"/v2/{repository}/tags/list", f"list tags of {repository}", (200, 404)
        )
        if resp.status_code == 404:
            return []
        try:
            return sorted(msgspec.json.decode(resp.content, type=_TagList).tags or [])
        except msgspec.DecodeError as exc:
            raise RegistryError(f"list tags of {repository}: unreadable answer ({exc})") from None

    def manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], str]:
        """(manifest, digest) for a tag or a digest; a digest reference is verified."""
        artifact.check_repository(repository)
        if reference.startswith("sha256:"):
            _require_sha256(reference)
        else:
            artifact.check_tag(reference)
        what = f"GET manifest {repository}:{reference}"
        resp = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            what,
            (200,),
            headers={"Accept": ", ".join(artifact.MANIFEST_ACCEPT)},
        )
        body = resp.content
        digest = sha256_bytes(body)
        expected = reference if reference.startswith("sha256:") else None
        expected = expected or resp.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha256:") and expected != digest:
            raise DigestMismatchError(
                f"manifest {self.settings.registry}/{repository}@{expected} has digest {digest}"
            )
        try:
            manifest = msgspec.json.decode(body)
        except msgspec.DecodeError:
            manifest = None
        if not isinstance(manifest, dict):
            raise RegistryError(f"{what}: the registry answered something that is not a manifest")
        return manifest, digest

    def blob(self, repository: str, digest: str) -> bytes:
        """A blob's bytes, verified against ``digest``."""
        artifact.check_repository(repository)
        _require_sha256(digest)
        resp = self._request(
            "GET", f"/v2/{repository}/blobs/{digest}", f"GET blob {digest}", (200,)
        )
        got = sha256_bytes(resp.content)
        if got != digest:
            raise DigestMismatchError(
                f"blob {digest} of {self.settings.registry}/{repository} arrived as {got}"
            )
        return resp.content

    def blob_to_file(self, repository: str, digest: str, path: Path) -> None:
        """Stream a blob into ``path``, verified; on any failure no file (partial or not)
        is left at ``path`` or beside it."""
        artifact.check_repository(repository)
        _require_sha256(digest)
        what = f"GET blob {digest}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                h = hashlib.sha256()
                url = f"/v2/{repository}/blobs/{digest}"
                with self._request("GET", url, what, (200,), stream=True) as resp:
                    self._expect(resp, (200,), what)
                    with self._errors(what):
                        for chunk in resp.iter_content(CHUNK):
                            h.update(chunk)
                            out.write(chunk)
            got = f"sha256:{h.hexdigest()}"
            if got != digest:
                raise DigestMismatchError(
                    f"blob {digest} of {self.settings.registry}/{repository} arrived as {got}"
                )
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # --- writing --------------------------------------------------------------------------

    def push_artifact(
        self,
        repository: str,
        tag: str,
        *,
        config: bytes,
        config_media_type: str,
        layers: Sequence[LayerSource],
        artifact_type: str | None = None,
        annotations: Mapping[str, str] | None = None,
        on_blob: Callable[[BlobPushed], None] | None = None,
    ) -> str:
        """Push layers, config and manifest; tag it. Returns the manifest digest.

        Idempotent: blobs the registry has are not sent, and a tag that already points at
        this exact manifest is left alone.
        """
        artifact.check_repository(repository)
        artifact.check_tag(tag)
        descriptors = [self._push_layer(repository, layer, on_blob) for layer in layers]
        config_desc = artifact.Descriptor(
            media_type=config_media_type, digest=sha256_bytes(config), size=len(config)
        )
        self._ensure_blob(repository, config_desc, config, on_blob, "config")
        body = artifact.build_manifest(
            config_desc, descriptors, artifact_type=artifact_type, annotations=annotations
        )
        digest = sha256_bytes(body)
        if self.tag_digest(repository, tag) == digest:
            return digest
        what = f"PUT manifest {repository}:{tag}"
        resp = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            what,
            (200, 201),
            data=body,
            headers={"Content-Type": artifact.OCI_MANIFEST},
        )
        stored = resp.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError(f"{what}: the registry stored {stored}, we sent {digest}")
        return digest

    def _push_layer(
        self, repository: str, layer: LayerSource, on_blob: Callable[[BlobPushed], None] | None
    ) -> artifact.Descriptor:
        path = Path(layer.path)
        try:
            size = layer.size if layer.digest and layer.size is not None else path.stat().st_size
            desc = artifact.Descriptor(
                media_type=layer.media_type,
                digest=layer.digest or sha256_file(path),
                size=size,
                annotations={artifact.ANNOTATION_TITLE: layer.title},
            )
            self._ensure_blob(repository, desc, path, on_blob, "layer")
        except FileNotFoundError:
            raise RegistryError(f"layer file {path} ({layer.title}) does not exist") from None
        return desc

    def _ensure_blob(
        self,
        repository: str,
        desc: artifact.Descriptor,
        source: bytes | Path,
        on_blob: Callable[[BlobPushed], None] | None,
        kind: str,
    ) -> None:
        """Upload the blob unless the registry has it; report either way."""
        started = time.monotonic()
        uploaded = not self.has_blob(repository, desc.digest)
        if uploaded and isinstance(source, bytes):
            self.upload_blob(repository, desc.digest, desc.size, source)
        elif uploaded:
            with open(source, "rb") as f:
                self.upload_blob(repository, desc.digest, desc.size, f)
        if on_blob is not None:
            seconds = time.monotonic() - started
            on_blob(
                BlobPushed(
                    digest=desc.digest,
                    size=desc.size,
                    seconds=seconds,
                    uploaded=uploaded,
                    kind=kind,
                )
            )

    def has_blob(self, repository: str, digest: str) -> bool:
        """HEAD the blob: True when the registry already holds it."""
        artifact.check_repository(repository)
        _require_sha256(digest)
        url = f"/v2/{repository}/blobs/{digest}"
        head = self._request("HEAD", url, f"HEAD blob {digest}", (200, 404))
        return head.status_code == 200

    def upload_blob(
        self, repository: str, digest: str, size: int, data: bytes | SupportsRead
    ) -> None:
        """POST an upload session, then PUT all ``size`` bytes in one request.

        ``data`` is bytes or anything with ``read(n)`` (a file; a pipe fed while it is
        read); the registry checks the bytes against ``digest`` (DigestMismatchError).
        """
        artifact.check_repository(repository)
        _require_sha256(digest)
        what = f"upload of blob {digest} to {repository}"
        post = self._request("POST", f"/v2/{repository}/blobs/uploads/", what, (202,), data=b"")
        location = post.headers.get("Location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        if not location.startswith("http"):
            location = f"{self._base}{location}"
        body = data if isinstance(data, bytes) else Sized(data, size)
        self._request(
            "PUT",
            oras.utils.append_url_params(location, {"digest": digest}),
            what,
            (201,),
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )


def _require_sha256(digest: str) -> None:
    if not artifact.is_sha256(digest):
        raise RegistryError(f"{digest!r} is not a sha256 digest (sha256:<64 hex>)")
