"""Is a server ready? Real checks: a NATS login, a registry answering ``/v2/``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.errors import Error as NatsError

from edgepub.shared.settings import servers_of


async def _tcp_open(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def nats_ready(url: str, user: str | None, password: str | None) -> bool:
    """Any server of ``url`` (one, or a comma-separated list) lets the user log in."""
    for server in servers_of(url):
        if await _server_ready(server, user, password):
            return True
    return False


async def _server_ready(url: str, user: str | None, password: str | None) -> bool:
    """TCP first (cheap), then a real nats-py login (INFO, CONNECT, PING/PONG)."""
    parsed = urlsplit(url)
    if parsed.hostname and not await _tcp_open(parsed.hostname, parsed.port or 4222):
        return False

    async def quiet(_: Exception) -> None:
        return None

    kwargs: dict[str, Any] = {}
    if user:
        kwargs.update(user=user, password=password or "")
    try:
        # nats-py retries a first connect on its own, whatever allow_reconnect says; bound it.
        async with asyncio.timeout(3.0):
            nc = await nats.connect(
                url, connect_timeout=1.0, allow_reconnect=False, error_cb=quiet, **kwargs
            )
    except (OSError, TimeoutError, NatsError):
        return False
    await nc.close()
    return True


async def registry_status(host: str, port: int) -> int | None:
    """The HTTP status of ``GET /v2/`` (no credentials), or None if nothing answers."""
    try:
        async with asyncio.timeout(2.0):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                request = f"GET /v2/ HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                writer.write(request.encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1])


async def registry_ready(host: str, port: int) -> bool:
    """Ready means it answers ``/v2/`` with 200 (no auth) or 401 (auth on)."""
    return await registry_status(host, port) in (200, 401)
