"""Running a service process: logging, settings, connect, ensure, run until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from . import bus, logs
from .settings import LogSettings, NatsSettings

Body = Callable[[NATS, JetStreamContext, asyncio.Event], Awaitable[None]]


async def _main(name: str, body: Body) -> None:
    log = structlog.get_logger(name).bind(service=name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await bus.connect(NatsSettings.from_env(), name=name, first_attempts=30)
    try:
        js = nc.jetstream()
        await bus.ensure_all(js)
        log.info("service_started")
        await body(nc, js, stop)
    finally:
        await nc.drain()
        log.info("service_stopped")


def run(name: str, body: Body) -> None:
    """The whole life of a service process; exits 0 after a clean SIGTERM."""
    cfg = LogSettings.from_env()
    logs.configure(fmt=cfg.format, level=cfg.level)
    asyncio.run(_main(name, body))
