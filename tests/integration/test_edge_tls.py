"""The edge listener with TLS on itself (``wss://``), as ``edgepub up --edge-tls-cert/-key``
renders it: an edge joins over TLS with a CA it trusts, and plain ``ws://`` gets nowhere."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from support.edge_bus import connect_edge, join_token, new_seed
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices


def self_signed(directory: Path) -> tuple[str, str]:
    cert, key = directory / "edge.crt", directory / "edge.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_stack(tmp_path: Path) -> Iterator[tuple[NatsServer, OpsServices, str]]:
    cert, key = self_signed(tmp_path)
    nats_server = NatsServer(tmp_path / "nats", ws_tls=(cert, key))
    registry = RegistryServer(tmp_path / "registry")
    ops = OpsServices(nats_server, registry, tmp_path / "logs")
    try:
        nats_server.start()
        registry.start()
        ops.start_available(("publish", "registry_push", "token"))
        yield nats_server, ops, cert
    finally:
        for proc in ops.procs.values():
            proc.kill()
        registry.kill()
        nats_server.kill()


def test_an_edge_joins_over_wss_and_plain_ws_gets_nowhere(
    tls_stack: tuple[NatsServer, OpsServices, str], model_file: Path
) -> None:
    nats_server, _, cert = tls_stack
    assert nats_server.ws_url.startswith("wss://")
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as client:
        model = client.upload_model("rf", model_file)
        publish = client.build_pipeline("tls").add_model_step(model).publish(progress=False)
        bundle = publish.add_edge("tls-edge").docker_run_variables["EDGE_BUNDLE"]
    trusted = ssl.create_default_context(cafile=cert)

    async def main() -> None:
        token = join_token(bundle)
        seed = new_seed()
        plain = nats_server.ws_url.replace("wss://", "ws://", 1)
        with pytest.raises(Exception):  # noqa: B017 - refused or never answered, either way
            async with asyncio.timeout(5):  # a TLS listener never speaks HTTP in the clear
                await connect_edge(nats_server, "tls-edge", seed, token, servers=[plain])
        async with asyncio.timeout(10):
            edge = await connect_edge(nats_server, "tls-edge", seed, token, tls=trusted)
        await edge.close()

    asyncio.run(main())
