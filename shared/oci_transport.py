"""HTTP for ``shared/oci.py``: oras-py's Registry with our request policy, and helpers.

Why not oras as shipped: its ``do_request`` retries any error with sleeps of 3, 4, 11, 29
and 83 s (the caller owns retries and deadlines here), has no timeout, and sends every
request bare to collect a 401 before sending it again with credentials. Here: one attempt,
a timeout, Basic credentials on the keep-alive session from the first request.
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
        resp: requests.Response = self.session.request(
            method,
            url,
            data=data,
            json=json,
            headers=headers or {},
            stream=stream,
            verify=self._tls_verify,
            timeout=self.timeouts,
        )
        return resp


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
