"""Now, by the broker's clock: deadlines are measured against the time the server stamped
a message with, so a service on a node whose clock runs ahead or behind neither gives up
early nor retries too long.

JetStream's ``STREAM.INFO`` answers carry ``ts``, the server's time of the answer. The
offset from the local clock is taken from the round trip's midpoint and refreshed now and
then (a clock that is stepped later is corrected within ``REFRESH_S``). Until a first
answer, the local clock is used as is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

log = structlog.get_logger("edgepub.bus")
REFRESH_S = 60.0
SKEW_TO_SAY_S = 1.0  # an offset this large is logged: someone should look at NTP


class _Info(msgspec.Struct):
    ts: str | None = None


_info = msgspec.json.Decoder(_Info)


def parse_ts(text: str) -> float:
    """An RFC 3339 timestamp with nanoseconds (Go's), as epoch seconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float(f"0.{frac}") if frac else 0.0)


class ServerClock:
    def __init__(
        self, nc: NATS | None, stream: str, *, local: Callable[[], float] = time.time
    ) -> None:
        self._nc = nc
        self._stream = stream
        self._local = local
        self.offset = 0.0  # server minus local, seconds
        self._measured_at = float("-inf")

    def now(self) -> float:
        return self._local() + self.offset

    async def refresh(self, *, force: bool = False) -> None:
        """Measure the offset again if it is older than REFRESH_S (never raises: a broker
        away keeps the last offset)."""
        if self._nc is None or (not force and time.monotonic() - self._measured_at < REFRESH_S):
            return
        sent = self._local()
        try:
            reply = await self._nc.request(f"$JS.API.STREAM.INFO.{self._stream}", b"", timeout=2)
            info = _info.decode(reply.data)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError):
            return
        if info.ts is None:
            return
        back = self._local()
        try:
            server = parse_ts(info.ts)
        except ValueError:
            return
        offset = server - (sent + back) / 2
        if abs(offset) >= SKEW_TO_SAY_S and abs(offset - self.offset) >= SKEW_TO_SAY_S:
            log.warning("clock_skew", stream=self._stream, server_minus_local_s=round(offset, 3))
        self.offset = offset
        self._measured_at = time.monotonic()
