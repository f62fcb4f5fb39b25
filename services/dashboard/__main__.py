"""``python -m edgepub.services.dashboard``: the fleet dashboard, a web page over what the
services publish (see ``web.py``).

Env: EDGEPUB_NATS_URL/USER/PASSWORD (its own read-only user ``dashboard``: it reads the
edges and publishes buckets and the pipeline log, and writes nothing), and
``settings.DashboardSettings``. Logs ``dashboard_serving`` with its URL once it listens.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from edgepub.shared.service import Body, run, settings_or_exit
from edgepub.shared.settings import NatsSettings

from .auth import Logins
from .settings import DashboardSettings
from .source import FleetSource
from .traffic import Traffic, read_traffic
from .views import SourceViews
from .web import Dashboard, log

NAME = "dashboard"


def body_for(settings: DashboardSettings) -> Body:
    async def body(nc: NATS, js: JetStreamContext, stop: asyncio.Event) -> None:
        source = FleetSource(js, is_connected=lambda: nc.is_connected)
        feed = asyncio.create_task(source.run(stop))

        async def traffic(name: str, start: datetime, end: datetime, edge: str | None) -> Traffic:
            return await read_traffic(js, name, start=start, end=end, edge=edge)

        dashboard = Dashboard(
            source,
            SourceViews(source, settings, now=lambda: datetime.now(UTC)),
            Logins(NatsSettings.from_env().servers),
            traffic,
        )
        runner = web.AppRunner(dashboard.app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else settings.port
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info("dashboard_serving", url=f"http://{host}:{port}/", port=port)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await feed

    return body


def main() -> None:
    run(NAME, body_for(settings_or_exit(NAME, DashboardSettings.from_env)))


if __name__ == "__main__":
    main()
