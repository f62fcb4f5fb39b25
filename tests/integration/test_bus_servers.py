"""A service given a cluster's servers connects through any node that answers: a list
whose other entries are dead (closed loopback ports) still connects, every time, and a
list with none alive fails in bounded time naming the list."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from edgepub.shared import bus
from edgepub.shared.errors import ServiceUnavailableError
from edgepub.shared.settings import NatsSettings
from support.procs import free_port
from support.servers import NatsServer


def test_a_list_with_dead_nodes_connects_through_the_live_one(nats_server: NatsServer) -> None:
    live = nats_server.settings("publish")
    dead = [f"nats://127.0.0.1:{free_port()}" for _ in range(2)]
    listed = NatsSettings(url=",".join([*dead, live.url]), user=live.user, password=live.password)

    async def main() -> list[int]:
        ports = []
        for _ in range(8):  # the order is shuffled per connect: each must find the live node
            nc = await bus.connect(listed, name="servers-test", wait_s=10.0)
            ports.append(nc.connected_url.port if nc.connected_url else 0)
            await nc.close()
        return ports

    ports = asyncio.run(main())
    assert set(ports) == {nats_server.port}


def test_a_list_of_dead_nodes_fails_in_bounded_time_naming_it() -> None:
    url = ",".join(f"nats://127.0.0.1:{free_port()}" for _ in range(3))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=re.escape(f"cannot reach NATS at {url} ")):
        asyncio.run(bus.connect(NatsSettings(url=url), name="servers-test", wait_s=1.0))
    assert time.monotonic() - started < 30  # a guard, not a timing assertion
