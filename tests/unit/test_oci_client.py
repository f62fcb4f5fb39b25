"""RegistryClient (shared/oci.py) against an in-memory registry mounted on its session:
push idempotence, digest checks, and every error translated in one place."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter
from structlog.testing import capture_logs

from edgepub.shared import artifact
from edgepub.shared.errors import (
    DigestMismatchError,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailableError,
)
from edgepub.shared.oci import LayerSource, RegistryClient, RegistryUnreachableError
from edgepub.shared.settings import RegistrySettings

PASSWORD = "s3cret-pa55word-xyz"
SETTINGS = RegistrySettings(
    registry="127.0.0.1:5999", username="edgepub", password=PASSWORD, insecure=True
)
Handler = Callable[[requests.PreparedRequest], requests.Response | None]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def response(
    req: requests.PreparedRequest,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.raw = io.BytesIO(body)
    resp.headers.update(headers or {})
    resp.request = req
    resp.url = req.url or ""
    return resp


def oci_error(
    req: requests.PreparedRequest, status: int, code: str, message: str
) -> requests.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return response(req, status, body)


class FakeRegistry(BaseAdapter):  # type: ignore[misc]
    """Just enough of the distribution API; ``override`` answers first when it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}  # -> (body, digest)
        self.calls: list[tuple[str, str]] = []
        self.auth_headers: list[str | None] = []
        self.override: Handler | None = None
        self.corrupt_blobs = False

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        method, url = request.method or "", request.url or ""
        self.calls.append((method, url.split("?")[0]))
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.override is not None and (resp := self.override(request)) is not None:
            return resp
        path = url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
        if path == "v2/":
            return response(request, 200, b"{}")
        if "/blobs/uploads/" in path and method == "POST":
            return response(request, 202, headers={"Location": f"/{path}u1?_state=x"})
        if "/blobs/uploads/" in path and method == "PUT":
            digest = url.split("digest=")[1].replace("%3A", ":")
            body = request.body if isinstance(request.body, bytes) else request.body.read()  # type: ignore[union-attr]
            if sha(body) != digest:
                return oci_error(request, 400, "DIGEST_INVALID", "provided digest did not match")
            self.blobs[digest] = body
            return response(request, 201, headers={"Docker-Content-Digest": digest})
        repo, kind, ref = path[3:].rsplit("/", 2)
        if kind == "blobs":
            if ref not in self.blobs:
                return oci_error(request, 404, "BLOB_UNKNOWN", "blob unknown to registry")
            data = self.blobs[ref] + (b"x" if self.corrupt_blobs else b"")
            return response(request, 200, b"" if method == "HEAD" else data)
        if method == "PUT":
            body = request.body if isinstance(request.body, bytes) else b""
            self.manifests[(repo, ref)] = (body, sha(body))
            return response(request, 201, headers={"Docker-Content-Digest": sha(body)})
        found = self.manifests.get((repo, ref)) or next(
            (v for (r, _), v in self.manifests.items() if r == repo and v[1] == ref), None
        )
        if found is None:
            return oci_error(request, 404, "MANIFEST_UNKNOWN", "manifest unknown")
        body, digest = found
        return response(
            request, 200, b"" if method == "HEAD" else body, {"Docker-Content-Digest": digest}
        )

    def close(self) -> None:
        pass


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def client(fake: FakeRegistry) -> RegistryClient:
    c = RegistryClient(SETTINGS, timeout_s=2.0)
    c.session.mount("http://", fake)
    return c


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx-bytes" * 1000)
    return path


def push(client: RegistryClient, model_file: Path, **kw: Any) -> str:
    return client.push_artifact(
        "edgepub/pipelines/p1",
        "v1",
        config=b'{"pipeline":"p1"}',
        config_media_type=artifact.PIPELINE_CONFIG_MEDIA_TYPE,
        layers=[LayerSource(str(model_file), artifact.ONNX_MODEL_MEDIA_TYPE, "model.onnx", **kw)],
        artifact_type=artifact.PIPELINE_ARTIFACT_TYPE,
    )


def test_push_then_read_back(client: RegistryClient, fake: FakeRegistry, model_file: Path) -> None:
    digest = push(client, model_file)
    manifest, got = client.manifest("edgepub/pipelines/p1", "v1")
    assert got == digest
    assert manifest["artifactType"] == artifact.PIPELINE_ARTIFACT_TYPE
    (layer,) = manifest["layers"]
    assert layer["annotations"] == {artifact.ANNOTATION_TITLE: "model.onnx"}
    assert layer["digest"] == sha(model_file.read_bytes())
    assert client.blob("edgepub/pipelines/p1", manifest["config"]["digest"]) == b'{"pipeline":"p1"}'
    assert client.manifest("edgepub/pipelines/p1", digest)[1] == digest
    assert client.tag_digest("edgepub/pipelines/p1", "v1") == digest
    assert client.tag_digest("edgepub/pipelines/p1", "v2") is None


def test_credentials_go_on_every_request_up_front(
    client: RegistryClient, fake: FakeRegistry, model_file: Path
) -> None:
    push(client, model_file)
    assert fake.auth_headers and all(h and h.startswith("Basic ") for h in fake.auth_headers)


def test_pushing_twice_sends_no_bytes_and_no_manifest(
    client: RegistryClient, fake: FakeRegistry, model_file: Path
) -> None:
    first = push(client, model_file)
    fake.calls.clear()
    assert push(client, model_file) == first
    assert {m for m, _ in fake.calls} == {"HEAD"}


def test_a_known_digest_is_not_rehashed_but_the_registry_checks_it(
    client: RegistryClient, model_file: Path
) -> None:
    assert push(client, model_file, digest=sha(model_file.read_bytes()))
    with pytest.raises(DigestMismatchError, match="do not match"):
        push(client, model_file, digest=sha(b"something else"))


def test_wrong_credentials(client: RegistryClient, fake: FakeRegistry, model_file: Path) -> None:
    fake.override = lambda req: oci_error(req, 401, "UNAUTHORIZED", "authentication required")
    for call in (client.check, lambda: push(client, model_file)):
        with pytest.raises(RegistryAuthError) as err:
            call()
        assert str(err.value) == (
            "registry 127.0.0.1:5999 refused the credentials for user 'edgepub' (HTTP 401); "
            "check EDGEPUB_REGISTRY_USERNAME/PASSWORD"
        )
        assert PASSWORD not in repr(err.value)


def test_no_credentials_says_which_to_set(fake: FakeRegistry) -> None:
    anon = RegistryClient(RegistrySettings(registry="127.0.0.1:5999", insecure=True))
    anon.session.mount("http://", fake)
    fake.override = lambda req: response(req, 401)
    with pytest.raises(RegistryAuthError, match=r"requires credentials.*EDGEPUB_REGISTRY_USERNAME"):
        anon.check()
    assert fake.auth_headers == [None]


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_unavailable(
    client: RegistryClient, fake: FakeRegistry, status: int
) -> None:
    fake.override = lambda req: oci_error(req, status, "UNAVAILABLE", "try later")
    with pytest.raises(RegistryUnreachableError) as err:
        client.check()
    assert err.value.code == "registry_unavailable"
    assert err.value.cause == f"HTTP {status} on GET /v2/: UNAVAILABLE: try later"


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (
            requests.exceptions.ConnectionError("[Errno 111] Connection refused"),
            "connection refused",
        ),
        (requests.exceptions.ConnectTimeout("slow"), "no answer within 2 s"),
        (requests.exceptions.ReadTimeout("slow"), "no answer within 2 s"),
        (requests.exceptions.ChunkedEncodingError("cut"), "ChunkedEncodingError"),
        (requests.exceptions.ConnectionError("reset by peer"), "ConnectionError: reset by peer"),
    ],
)
def test_network_errors_are_unavailable(
    client: RegistryClient, fake: FakeRegistry, model_file: Path, exc: Exception, cause: str
) -> None:
    def fail(req: requests.PreparedRequest) -> requests.Response:
        raise exc

    fake.override = fail
    with pytest.raises(RegistryUnavailableError) as err:
        push(client, model_file)
    assert str(err.value).startswith(f"registry 127.0.0.1:5999 unreachable: {cause}")


def test_other_refusals_quote_the_registry(client: RegistryClient) -> None:
    with pytest.raises(RegistryError) as err:
        client.manifest("edgepub/pipelines/p1", "nope")
    assert type(err.value) is RegistryError
    assert "HTTP 404" in str(err.value) and "MANIFEST_UNKNOWN: manifest unknown" in str(err.value)


def test_blob_digest_is_verified(
    client: RegistryClient, fake: FakeRegistry, model_file: Path
) -> None:
    push(client, model_file)
    digest = sha(model_file.read_bytes())
    fake.corrupt_blobs = True
    with pytest.raises(DigestMismatchError):
        client.blob("edgepub/pipelines/p1", digest)


def test_blob_to_file(
    client: RegistryClient, fake: FakeRegistry, model_file: Path, tmp_path: Path
) -> None:
    push(client, model_file)
    digest = sha(model_file.read_bytes())
    out = tmp_path / "pulled" / "model.onnx"
    client.blob_to_file("edgepub/pipelines/p1", digest, out)
    assert out.read_bytes() == model_file.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


def test_blob_to_file_leaves_nothing_on_a_mismatch(
    client: RegistryClient, fake: FakeRegistry, model_file: Path, tmp_path: Path
) -> None:
    push(client, model_file)
    fake.corrupt_blobs = True
    out = tmp_path / "pulled" / "model.onnx"
    with pytest.raises(DigestMismatchError):
        client.blob_to_file("edgepub/pipelines/p1", sha(model_file.read_bytes()), out)
    assert list(out.parent.iterdir()) == []


def test_manifest_digest_reference_is_verified(
    client: RegistryClient, fake: FakeRegistry, model_file: Path
) -> None:
    digest = push(client, model_file)
    key = next(iter(fake.manifests))
    body, stored = fake.manifests[key]
    fake.manifests[key] = (body + b" ", stored)
    for reference in ("v1", digest):
        with pytest.raises(DigestMismatchError):
            client.manifest("edgepub/pipelines/p1", reference)


def test_names_are_checked_before_any_request(client: RegistryClient, fake: FakeRegistry) -> None:
    with pytest.raises(RegistryError):
        client.blob("edgepub/p", "md5:abc")
    with pytest.raises(ValueError):
        client.manifest("Bad Repo", "v1")
    assert fake.calls == []


def test_the_password_never_reaches_a_log_line(fake: FakeRegistry) -> None:
    from edgepub.shared.logs import redact

    RegistryClient(SETTINGS)  # registers the password as a secret
    with capture_logs(processors=[redact]) as logs:
        import structlog

        structlog.get_logger().error("boom", error=f"https://edgepub:{PASSWORD}@x failed")
    assert PASSWORD not in json.dumps(logs)


class TokenServer:
    """A registry that wants Bearer tokens (as GHCR and Harbor do), with its token realm."""

    def __init__(
        self,
        fake: FakeRegistry,
        password: str = PASSWORD,
        realm: str = "http://127.0.0.1:5999/token",
    ) -> None:
        self.fake = fake
        self.password = password
        self.realm = realm
        self.issued: list[str] = []
        self.token_auth: list[str | None] = []  # the Authorization each token request carried
        fake.override = self

    def __call__(self, req: requests.PreparedRequest) -> requests.Response | None:
        url = req.url or ""
        auth = req.headers.get("Authorization") or ""
        if url.startswith(self.realm):
            self.token_auth.append(req.headers.get("Authorization"))
            expected = requests.auth._basic_auth_str("edgepub", self.password)
            if auth != expected:
                return response(req, 401)
            scope = url.split("scope=")[1] if "scope=" in url else ""
            self.issued.append(scope)
            return response(req, 200, json.dumps({"token": f"t-{len(self.issued)}"}).encode())
        if not auth.startswith("Bearer t-"):
            challenge = f'Bearer realm="{self.realm}",service="fake",scope="x"'
            return response(req, 401, headers={"WWW-Authenticate": challenge})
        return None  # authorised: the plain fake answers


def test_token_registries_get_a_token_per_repository(
    client: RegistryClient, fake: FakeRegistry, model_file: Path
) -> None:
    server = TokenServer(fake)
    digest = push(client, model_file)
    assert client.manifest("edgepub/pipelines/p1", "v1")[1] == digest
    assert len(server.issued) == 1  # one token for the repository, reused by every request
    client.check()
    assert len(server.issued) == 2


def test_token_registries_refusing_the_credentials(fake: FakeRegistry, model_file: Path) -> None:
    TokenServer(fake, password="another")
    client = RegistryClient(SETTINGS)
    client.session.mount("http://", fake)
    with pytest.raises(RegistryAuthError, match="refused the credentials"):
        push(client, model_file)


# --- credentials go to the registry's own host only ---------------------------------------


@pytest.mark.parametrize(
    "realm",
    [
        "http://auth.example:5999/token",  # another host
        "http://127.0.0.1:6000/token",  # the registry's host, another port
        "http://edgepub:x@127.0.0.1:5999/token",  # credentials of its own in the URL
    ],
)
def test_a_token_server_elsewhere_never_gets_the_credentials(
    fake: FakeRegistry, model_file: Path, realm: str
) -> None:
    server = TokenServer(fake, realm=realm)
    client = RegistryClient(SETTINGS)
    client.session.mount("http://", fake)
    with pytest.raises(RegistryAuthError, match="did not send it the credentials") as err:
        push(client, model_file)
    ours = requests.auth._basic_auth_str("edgepub", PASSWORD)
    assert len(server.token_auth) == 1 and ours not in server.token_auth  # asked without them
    assert realm.rsplit("@", 1)[-1].split("/", 1)[0] in str(err.value)
    assert PASSWORD not in str(err.value) and "edgepub:x" not in str(err.value)


def test_a_plain_http_token_realm_gets_no_credentials_unless_insecure(
    fake: FakeRegistry, model_file: Path
) -> None:
    secure = RegistrySettings(registry="reg.example", username="edgepub", password=PASSWORD)
    client = RegistryClient(secure)
    client.session.mount("https://", fake)
    client.session.mount("http://", fake)
    server = TokenServer(fake, realm="http://reg.example/token")
    with pytest.raises(RegistryAuthError, match="not HTTPS"):
        push(client, model_file)
    assert server.token_auth == [None]


def test_an_https_token_realm_on_the_registry_host_gets_them(
    fake: FakeRegistry, model_file: Path
) -> None:
    secure = RegistrySettings(registry="reg.example", username="edgepub", password=PASSWORD)
    client = RegistryClient(secure)
    client.session.mount("https://", fake)
    server = TokenServer(fake, realm="https://reg.example:443/token")
    push(client, model_file)
    assert server.token_auth and all(a and a.startswith("Basic ") for a in server.token_auth)


def test_an_upload_location_on_another_host_gets_no_credentials(
    client: RegistryClient, fake: FakeRegistry, model_file: Path
) -> None:
    seen: dict[str, str | None] = {}

    def elsewhere(req: requests.PreparedRequest) -> requests.Response | None:
        url = req.url or ""
        if req.method == "POST" and "/blobs/uploads/" in url:
            return response(req, 202, headers={"Location": "http://storage.example/up/u1"})
        if url.startswith("http://storage.example/"):
            seen[url.split("?")[0]] = req.headers.get("Authorization")
            return response(req, 401)
        return None

    fake.override = elsewhere
    with pytest.raises(RegistryAuthError):
        push(client, model_file)
    assert seen == {"http://storage.example/up/u1": None}
