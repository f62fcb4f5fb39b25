"""HTTP for ``shared/oci.py``: oras-py's Registry with our request policy, and helpers.

Why not oras as shipped: its ``do_request`` retries any error with sleeps of 3, 4, 11, 29
and 83 s (the caller owns retries and deadlines here), has no timeout, and sends every
request bare to collect a 401 before sending it again with credentials. Here: one attempt,
a timeout, Basic credentials on the keep-alive session from the first request (htpasswd
registries: distribution, zot), and a Bearer token per repository fetched with them when
a registry asks for one (GHCR, Harbor, Docker Hub).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import msgspec
import oras.auth.utils
import oras.provider
import requests

from .settings import RegistrySettings

CHUNK = 1 << 20


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
        if settings.username:
            self.auth.set_basic_auth(settings.username, settings.password or "")
            basic = oras.auth.utils.get_basic_auth(settings.username, settings.password or "")
            self.session.headers["Authorization"] = f"Basic {basic}"
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
        """One request. Basic credentials ride on the session; a registry that answers
        with a Bearer challenge (GHCR, Harbor...) gets a token for that repository, and the
        request is sent once more if its body can be sent again."""
        key = scope_key(url)
        sent = dict(headers or {})
        if key in self.tokens:
            sent["Authorization"] = f"Bearer {self.tokens[key]}"
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

    def _token(self, challenge: str) -> str | None:
        """The token server's answer to a Bearer challenge, asked with our Basic
        credentials (the session's); None if it refuses."""
        fields = oras.auth.utils.parse_auth_header(challenge)
        if not fields.realm or not fields.realm.startswith(("https://", "http://")):
            return None
        params = {k: v for k, v in (("service", fields.service), ("scope", fields.scope)) if v}
        resp = self.session.get(
            fields.realm, params=params, verify=self._tls_verify, timeout=self.timeouts
        )
        if resp.status_code != 200:
            return None
        try:
            body = msgspec.json.decode(resp.content)
        except msgspec.DecodeError:
            return None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        return token if isinstance(token, str) and token else None


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
