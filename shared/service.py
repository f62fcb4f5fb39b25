"""Running a service process: logging, settings, connect, ensure, run until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from . import bus, logs
from .errors import ConfigError
from .settings import LogSettings, NatsSettings
from .transient import retry_transient

S = TypeVar("S")

Body = Callable[[NATS, JetStreamContext, asyncio.Event], Awaitable[None]]
Provision = Callable[[JetStreamContext], Awaitable[None]]


async def _main(name: str, body: Body, provision: Provision | None) -> None:
    log = structlog.get_logger(name).bind(service=name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # a service may start before the broker: wait for it, but refused credentials end it
    nc = await bus.connect(NatsSettings.from_env(), name=name, wait_s=30.0)
    try:
        js = nc.jetstream()
        if provision is not None:  # only the owner of streams and buckets creates them
            await retry_transient(lambda: provision(js), what="provisioning streams")
        log.info("service_started")
        await body(nc, js, stop)
    finally:
        await nc.drain()
        log.info("service_stopped")


def run(name: str, body: Body, provision: Provision | None = None) -> None:
    """The whole life of a service process; exits 0 after a clean SIGTERM. ``provision``
    creates what the service owns on the bus (its user may create nothing else)."""
    cfg = LogSettings.from_env()
    logs.configure(fmt=cfg.format, level=cfg.level)
    asyncio.run(_main(name, body, provision))


def settings_or_exit(name: str, read: Callable[[], S]) -> S:
    """A service's settings from the environment, or exit 2 with one line naming what is
    wrong (before any connect or log setup, so a typo fails in milliseconds)."""
    try:
        return read()
    except ConfigError as exc:
        print(f"{name}: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
