"""HTTP for ``shared/oci.py``: oras-py's Registry with our request policy, and helpers.

Why not oras as shipped: its ``do_request`` retries any error with sleeps of 3, 4, 11, 29
and 83 s (the caller owns retries and deadlines here), has no timeout, and sends every
request bare to collect a 401 before sending it again with credentials. Here: one attempt,
a timeout, Basic credentials on the keep-alive session from the first request (htpasswd
registries: distribution, zot), and a Bearer token per repository fetched with them when
a registry asks for one (GHCR, Harbor).

Credentials go only to the registry's own host: every request to another host (an upload
``Location`` elsewhere, a token realm elsewhere) is sent without them, and a token realm on
the registry's host gets them only over HTTPS unless the registry was configured insecure.
A registry whose token server lives on another host (Docker Hub's auth.docker.io) therefore
gets an anonymous token request, and a refused push says why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
import oras.auth.utils
import oras.provider
import requests

from .settings import RegistrySettings

CHUNK = 1 << 20
_DEFAULT_PORTS = {"https": 443, "http": 80}


class SupportsRead(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Transport(oras.provider.Registry):  # type: ignore[misc]
    """oras's Registry with our request policy (see the module docstring)."""

    def __init__(self, settings: RegistrySettings, timeout_s: float) -> None:
        super().__init__(
            hostname=settings.registry, insecure=settings.insecure, auth_backend="basic"
        )
        self.timeouts = (min(5.0, timeout_s), timeout_s)
        self.tokens: dict[str, str] = {}  # repository -> bearer token (token registries)
        own = urlsplit(f"//{settings.registry}")
        self._host = own.hostname or ""
        self._port = own.port or _DEFAULT_PORTS["http" if settings.insecure else "https"]
        self.insecure = settings.insecure
        # Never on the session: added per request, and only to the registry (``is_registry``).
        self._basic: str | None = None
        if settings.username:
            basic = oras.auth.utils.get_basic_auth(settings.username, settings.password or "")
            self._basic = f"Basic {basic}"
        self.withheld_from: str | None = None  # a token realm we did not send credentials to
        self.session.trust_env = False  # no proxies or .netrc between us and the registry

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request. Basic credentials go with it (to the registry's host only); a
        registry that answers with a Bearer challenge (GHCR, Harbor...) gets a token for that
        repository, and the request is sent once more if its body can be sent again."""
        key = scope_key(url)
        sent = dict(headers or {})
        if key in self.tokens:
            sent["Authorization"] = f"Bearer {self.tokens[key]}"
        elif self._basic is not None:
            sent["Authorization"] = self._basic
        if not self.is_registry(url):
            sent.pop("Authorization", None)
        resp = self._send(method, url, data, sent, json, stream)
        challenge = resp.headers.get("WWW-Authenticate", "")
        if resp.status_code != 401 or not challenge.lower().startswith("bearer "):
            return resp
        token = self._token(challenge)
        if token is None:
            return resp  # the 401 stands: credentials refused
        self.tokens[key] = token
        if not (data is None or isinstance(data, bytes)):
            raise requests.exceptions.ConnectionError(
                "the registry's token expired during an upload; it is retried with a new one"
            )
        resp.close()
        sent["Authorization"] = f"Bearer {token}"
        return self._send(method, url, data, sent, json, stream)

    def _send(
        self, method: str, url: str, data: Any, headers: dict[str, str], json: Any, stream: bool
    ) -> requests.Response:
        resp: requests.Response = self.session.request(
            method,
            url,
            data=data,
            json=json,
            headers=headers,
            stream=stream,
            verify=self._tls_verify,
            timeout=self.timeouts,
        )
        return resp

    def is_registry(self, url: str, *, secure_only: bool = False) -> bool:
        """True when ``url`` is on the registry's own host and port (and, with
        ``secure_only``, over HTTPS unless the registry was configured insecure)."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or parts.username or parts.password:
            return False
        if secure_only and parts.scheme != "https" and not self.insecure:
            return False
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        return (parts.hostname or "") == self._host and port == self._port

    def _token(self, challenge: str) -> str | None:
        """The token server's answer to a Bearer challenge; None if it refuses. Our Basic
        credentials go with the question only to the registry's own host (HTTPS unless
        insecure); any other realm is asked anonymously."""
        fields = oras.auth.utils.parse_auth_header(challenge)
        if not fields.realm or not fields.realm.startswith(("https://", "http://")):
            return None
        params = {k: v for k, v in (("service", fields.service), ("scope", fields.scope)) if v}
        headers: dict[str, str] = {}
        if self._basic is not None:
            if self.is_registry(fields.realm, secure_only=True):
                headers["Authorization"] = self._basic
            else:
                self.withheld_from = _without_userinfo(fields.realm)
        resp = self.session.get(
            fields.realm,
            params=params,
            headers=headers,
            verify=self._tls_verify,
            timeout=self.timeouts,
        )
        if resp.status_code != 200:
            return None
        try:
            body = msgspec.json.decode(resp.content)
        except msgspec.DecodeError:
            return None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        return token if isinstance(token, str) and token else None


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}"


def scope_key(url: str) -> str:
    """The repository a /v2/ URL is about ("" for /v2/ itself): tokens are per repository."""
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    for marker in ("/blobs/", "/manifests/", "/tags/"):
        if marker in path:
            return path.removeprefix("v2/").split(marker, 1)[0]
    return ""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def sha256_bytes(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def registry_message(resp: requests.Response) -> str:
    """The registry's own words: OCI error bodies are {"errors": [{code, message}]}."""
    try:
        body = msgspec.json.decode(resp.content)
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            return "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors)
    except (msgspec.DecodeError, AttributeError):
        pass
    return (resp.text or resp.reason or "").strip()[:200]


class Sized:
    """A reader with a length, so ``requests`` sends Content-Length and streams it."""

    def __init__(self, reader: SupportsRead, size: int) -> None:
        self._reader = reader
        self._size = size

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)
