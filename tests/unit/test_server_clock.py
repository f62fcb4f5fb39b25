"""The broker's clock as services use it: Go's RFC 3339 stamps parsed exactly, the offset
taken from a round trip's midpoint, a broker away keeping the last offset."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import nats.errors
import pytest

from edgepub.shared.server_clock import ServerClock, parse_ts


def test_go_timestamps_parse_to_epoch_seconds() -> None:
    stamp = datetime(2026, 12, 2, 2, 48, 52, tzinfo=UTC).timestamp()
    assert parse_ts("2026-12-02T02:48:52.566378759Z") == pytest.approx(stamp + 0.566378759)
    assert parse_ts("2026-12-02T02:48:52Z") == stamp


class FakeNats:
    def __init__(self, server_minus_local: float, local: list[float]) -> None:
        self.offset = server_minus_local
        self.local = local
        self.fail = False

    async def request(self, subject: str, data: bytes, **_: Any) -> Any:
        assert subject == "$JS.API.STREAM.INFO.S"
        if self.fail:
            raise nats.errors.TimeoutError
        self.local[0] += 0.2  # the round trip takes 0.2 s
        ts = datetime.fromtimestamp(self.local[0] - 0.1 + self.offset, UTC)
        body = {"ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"}

        class Reply:
            data = json.dumps(body).encode()

        return Reply()


def test_the_offset_is_the_servers_and_survives_a_broker_away() -> None:
    local = [1_000_000.0]
    fake = FakeNats(3600.0, local)
    clock = ServerClock(fake, "S", local=lambda: local[0])  # type: ignore[arg-type]
    assert clock.now() == local[0]  # before any answer: the local clock
    asyncio.run(clock.refresh())
    assert clock.offset == pytest.approx(3600.0, abs=0.001)
    assert clock.now() == pytest.approx(local[0] + 3600.0, abs=0.001)
    fake.fail = True
    asyncio.run(clock.refresh(force=True))
    assert clock.offset == pytest.approx(3600.0, abs=0.001)
