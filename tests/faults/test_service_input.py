"""The services against clients and registries that do not play by the rules, across real
processes: a registry that names a token server elsewhere, raw requests built by hand,
fuzzed request bodies. Each test checks both ends: what the caller was told, and that the
service is alive with nothing changed that should not have."""

from __future__ import annotations

import asyncio
import collections
import math
import os
import stat
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import msgpack
from onnx import external_data_helper

from edgepub import Client
from edgepub.samples import house_price_model
from edgepub.shared import bus, errors, rpc, subjects
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import ModelVersion, Pushed, PushFailed
from support.kv import publish_records
from support.procs import ChildProcess, free_port, port_open
from support.registry_push import Bus, PushService, onnx_model, publish_requested
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

# --- a registry whose token server is on another host --------------------------------------

TOKEN_REGISTRY = textwrap.dedent(
    """
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    registry_port, token_port = int(sys.argv[1]), int(sys.argv[2])

    class Registry(BaseHTTPRequestHandler):
        def answer(self):
            if self.headers.get("Authorization", "").startswith("Bearer "):
                self.send_response(403)  # the anonymous token may not push
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(401)
            realm = f"http://localhost:{token_port}/token"
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="fake"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = answer
        def log_message(self, *args):
            pass

    class Tokens(BaseHTTPRequestHandler):
        def do_GET(self):
            print("token_request authorization=" + repr(self.headers.get("Authorization")),
                  flush=True)
            body = json.dumps({"token": "anonymous"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", registry_port), Registry),
               ThreadingHTTPServer(("127.0.0.1", token_port), Tokens)]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()
    """
)


class TokenRegistry:
    def __init__(self, base: Path) -> None:
        self.port, self.token_port = free_port(), free_port()
        script = base / "token_registry.py"
        base.mkdir(parents=True, exist_ok=True)
        script.write_text(TOKEN_REGISTRY)
        argv = [sys.executable, str(script), str(self.port), str(self.token_port)]
        self.child = ChildProcess(argv, base / "token_registry.log")

    def token_requests(self) -> list[str]:
        return [ln for ln in self.child.log_text().splitlines() if ln.startswith("token_request")]


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[TokenRegistry]:
    server = TokenRegistry(tmp_path / "token-registry")
    server.child.spawn()
    try:
        wait_for(lambda: port_open(server.port) and port_open(server.token_port), what="ready")
        yield server
    finally:
        server.child.kill()


def test_credentials_never_go_to_a_token_server_on_another_host(
    push_service: PushService,
    registry: RegistryServer,
    test_bus: Bus,
    token_registry: TokenRegistry,
) -> None:
    """The registry (127.0.0.1) names a token URL on another host (localhost): registry-push
    asks it without the credentials, and the publish fails saying why."""
    service = push_service.start(EDGEPUB_REGISTRY=f"127.0.0.1:{token_registry.port}")
    model = test_bus.put_model("m", onnx_model(4, seed=31))
    test_bus.send(publish_requested([model], publish_id=71))

    failed = test_bus.wait_outcome(71, timeout=60)
    assert isinstance(failed, PushFailed), failed
    assert failed.code == "registry_auth"
    assert f"localhost:{token_registry.token_port}/token" in failed.reason
    asked = token_registry.token_requests()
    assert asked, "registry-push never asked the token server"
    assert all(line.endswith("authorization=None") for line in asked), asked
    assert registry.password not in token_registry.child.log_text()
    assert service.running()


# --- registry-push: models that are not whole, configs beyond the limits, its cache ---------


def external_data_model() -> bytes:
    """A model whose weights live in 'weights.bin' beside it (ONNX external data)."""
    model = onnx.load_from_string(onnx_model(1024, seed=41))
    tensor = model.graph.initializer[0]
    external_data_helper.set_external_data(tensor, location="weights.bin")
    tensor.ClearField("raw_data")
    return bytes(model.SerializeToString())


def has_blob(reader: RegistryClient, model: ModelVersion, pipeline: str) -> bool:
    return reader.has_blob(f"edgepub/pipelines/{pipeline}", model.digest)


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (external_data_model, "model_external_data", "save_as_external_data=False"),
        (lambda: b"\x08\x07" + bytes(range(256)) * 64, "invalid_model", "not a well-formed"),
    ],
    ids=["external-data", "not-onnx"],
)
def test_a_model_no_edge_could_load_is_never_pushed(
    push_service: PushService,
    test_bus: Bus,
    reader: RegistryClient,
    data: Callable[[], bytes],
    code: str,
    words: str,
) -> None:
    """A raw client put the bytes in the object store; registry-push refuses them before
    the registry has the blob, so the publish ends Error, and a later publish of the same
    model (the registry would otherwise already hold it) fails the same way."""
    service = push_service.start()
    bad = test_bus.put_model("bad", data(), "bad.onnx")
    for publish_id in (81, 82):
        test_bus.send(publish_requested([bad], publish_id=publish_id, pipeline="p-bad"))
        failed = test_bus.wait_outcome(publish_id)
        assert isinstance(failed, PushFailed), failed
        assert failed.code == code and words in failed.reason
        assert "model 'bad'" in failed.reason
    assert not has_blob(reader, bad, "p-bad")
    assert reader.tags("edgepub/pipelines/p-bad") == []

    good = test_bus.put_model("good", onnx_model(4, seed=42))
    test_bus.send(publish_requested([good], publish_id=83, pipeline="p-good"))
    assert isinstance(test_bus.wait_outcome(83), Pushed)
    assert service.running()
    assert service.count_events("message_poison") == service.count_events("handler_failed") == 0


def test_a_config_beyond_the_limits_fails_its_publish_not_the_service(
    push_service: PushService, test_bus: Bus
) -> None:
    """A PublishRequested written before the publish service checked configs: it used to
    crash the chart writer on every redelivery, leaving the publish Publishing forever."""
    service = push_service.start()
    model = test_bus.put_model("m", onnx_model(4, seed=43))
    for publish_id, engine in ((91, {"cpu": math.inf}), (92, "x"), (93, {"resources": [1]})):
        body = msgspec.to_builtins(publish_requested([model], publish_id=publish_id))
        body["engine_config"] = {"engine": engine}
        test_bus.run(test_bus.js.publish(subjects.PUBLISH_REQUESTED, msgpack.encode(body)))
        failed = test_bus.wait_outcome(publish_id)
        assert isinstance(failed, PushFailed), failed
        assert failed.code == "invalid_request"
        assert "`$.engine_config.engine" in failed.reason
    assert service.running()
    assert service.count_events("message_poison") == service.count_events("handler_failed") == 0


def test_the_cache_stays_within_its_bound_and_private(
    push_service: PushService, test_bus: Bus, tmp_path: Path
) -> None:
    models = [test_bus.put_model(f"m{n}", onnx_model(64 * 1024, seed=50 + n)) for n in range(4)]
    bound = int(1.5 * models[0].size)  # room for one file, not two
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o755)
    os.chmod(cache_dir, 0o755)  # as an earlier version left it
    service = push_service.start(EDGEPUB_CACHE_MAX_BYTES=str(bound))
    for n, model in enumerate(models):
        test_bus.send(publish_requested([model], publish_id=100 + n, pipeline=f"p{n}"))
        assert isinstance(test_bus.wait_outcome(100 + n), Pushed)
        files = [p for p in (cache_dir / "models").iterdir() if not p.name.startswith(".")]
        assert sum(p.stat().st_size for p in files) <= bound
        assert [p.name for p in files] == [model.sha256]  # the newest stays
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    for d in (cache_dir, cache_dir / "models", cache_dir / "charts"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert list((cache_dir / "charts").iterdir()) == []  # a chart is a file only while pushed
    assert service.count_events("cache_evicted") == 3


# --- the publish service against fuzzed request bodies ----------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "\n", "a\n", "../x.onnx", "x" * 300, "-1", "1e300", "nan", "$", ">"]),
    st.binary(max_size=16),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _templates(model: Any) -> dict[str, dict[str, Any]]:
    spec = {"name": "x", "dtype": "float32", "shape": [None, 18]}
    return {
        subjects.VERB_MODEL_REGISTER: {
            "name": "fuzzed",
            "sha256": model.sha,
            "size": 1,
            "file_name": "fuzzed.onnx",
            "inputs": [spec],
            "outputs": [spec],
        },
        subjects.VERB_MODEL_GET: {"name": model.name, "version": model.version},
        subjects.VERB_PIPELINE_BUILD: {"name": "fuzz"},
        subjects.VERB_PUBLISH_CREATE: {
            "request_id": "6c3d9899-1335-456b-aaa0-52d03a017cc4",
            "pipeline_name": "fuzz",
            "steps": [{"name": model.name, "version": model.version}],
            "engine_config": {"engine": {"cpu": 0.5, "resources": {"limits": {"memory": "1Gi"}}}},
            "replaces": [],
        },
        subjects.VERB_PUBLISH_GET: {"id": 1},
        subjects.VERB_PUBLISH_LIST: {"pipeline_name": "fuzz"},
    }


_resources = st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]), _values)
_NASTY_ENGINES = [
    {"cpu": math.inf},
    {"cpu": math.nan},
    "x",
    {"resources": [1]},
    {"cpu": 1e300},
    {"replicas": 10**12},
    {"resources": {"limits": {"memory": 7}}},
    {"resources": {"limits": "x"}},
]
_engine_configs = st.fixed_dictionaries(
    {},
    optional={
        "engine": st.one_of(
            st.sampled_from(_NASTY_ENGINES),
            _values,
            st.dictionaries(
                st.sampled_from(["cpu", "replicas", "gpu", "arch", "image", "resources"]),
                st.one_of(
                    _values,
                    st.dictionaries(st.sampled_from(["limits", "requests"]), _resources),
                ),
            ),
        ),
        "enginelb": _values,
        "engineAux": st.one_of(_values, st.fixed_dictionaries({"images": _values})),
    },
)


def _mutate(verb: str, template: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    body = dict(template)
    if "request_id" in body:  # a new request each time, so each one is really handled
        body["request_id"] = str(data.draw(st.uuids()))
    if verb == subjects.VERB_PUBLISH_CREATE and data.draw(st.integers(0, 3)):
        body["engine_config"] = data.draw(_engine_configs)
        return body
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*body, "extra"]) if body else st.just("extra"))
        if data.draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = data.draw(_values)
    return body


def test_fuzzed_requests_always_get_a_typed_answer(
    ops: OpsServices, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Random bytes, random msgpack, and valid requests with fields removed, added or
    replaced by anything, for every verb: always an answer, always a named error (never
    "internal", never silence), and both services alive afterwards."""
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as client:
        model = client.upload_model("rf", house_price_model(tmp_path / "rf.onnx", n_estimators=2))
        client.build_pipeline("fuzz")
    templates = _templates(model)
    loop = asyncio.new_event_loop()
    nc = loop.run_until_complete(bus.connect(s, name="fuzzer"))
    known = set(errors.BY_CODE) - {errors.EdgepubError.code, errors.ServiceUnavailableError.code}
    codes: collections.Counter[str] = collections.Counter()

    def send(verb: str, data: bytes) -> None:
        subject = subjects.request(s.user or "", verb)
        try:
            loop.run_until_complete(
                rpc.call(nc, subject, msgspec.Raw(data), msgspec.Raw, timeout=10)  # type: ignore[arg-type]
            )
            codes["ok"] += 1
        except errors.EdgepubError as exc:
            assert exc.code in known, (verb, data, exc)
            codes[exc.code] += 1

    @settings(
        max_examples=250,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(subjects.VERBS), st.integers(0, 3), st.data())
    def one(verb: str, kind: int, data: st.DataObject) -> None:
        if kind == 0:
            body = data.draw(st.binary(max_size=64))
        elif kind == 1:
            body = msgpack.encode(data.draw(_values))
        else:
            if kind == 3:  # what crashed registry-push: a publish with a strange config
                verb = subjects.VERB_PUBLISH_CREATE
            body = msgpack.encode(_mutate(verb, templates.get(verb, {}), data))
        send(verb, body)

    try:
        one()
    finally:
        loop.run_until_complete(nc.close())
        loop.close()
    assert codes["invalid_request"] > 0 and codes["ok"] > 0 and sum(codes.values()) >= 250
    # Every publish the fuzzer managed to create ends, one way or the other.
    wait_for(
        lambda: all(r.status in ("Published", "Error") for r in publish_records(nats_server)),
        timeout=120,
        what="every fuzzed publish to end Published or Error",
    )
    for name in ("publish", "registry_push"):
        assert ops[name].running(), ops[name].log_text()[-3000:]
    assert ops["publish"].count_events("request_failed") == 0
    assert ops["registry_push"].count_events("message_poison") == 0
    assert ops["registry_push"].count_events("handler_failed") == 0
