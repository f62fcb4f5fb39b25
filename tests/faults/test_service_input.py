"""The services against clients and registries that do not play by the rules, across real
processes: a registry that names a token server elsewhere, raw requests built by hand,
fuzzed request bodies. Each test checks both ends: what the caller was told, and that the
service is alive with nothing changed that should not have."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub.shared.schemas import PushFailed
from support.procs import ChildProcess, free_port, port_open
from support.registry_push import Bus, PushService, onnx_model, publish_requested
from support.servers import RegistryServer
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
