"""Fixtures the fault tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from support.fleet import Fleet
from support.servers import NatsServer, RegistryServer


@pytest.fixture
def fleet(
    client: Client, registry: RegistryServer, nats_server: NatsServer, tmp_path: Path
) -> Iterator[Fleet]:
    """Real agents against the stack; every agent it started is killed, pass or fail (a
    module's own ``nats_server`` fixture, e.g. a smaller max_payload, is the one used)."""
    with Fleet(client, registry, nats_server, tmp_path) as f:
        yield f
