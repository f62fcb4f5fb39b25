"""The blocked-loop watch catches a blocking call and stays quiet otherwise."""

from __future__ import annotations

import asyncio
import time

from support.loopwatch import watch_loops


async def _blocks() -> None:
    time.sleep(0.3)  # noqa: ASYNC251 - the point of the test


async def _awaits() -> None:
    await asyncio.sleep(0.3)


def test_a_blocking_call_is_caught() -> None:
    with watch_loops(threshold=0.1) as stalls:
        asyncio.run(_blocks())
    assert len(stalls) == 1 and "took 0.3" in stalls[0]


def test_awaiting_is_not_blocking() -> None:
    with watch_loops(threshold=0.1) as stalls:
        asyncio.run(_awaits())
    assert stalls == []
