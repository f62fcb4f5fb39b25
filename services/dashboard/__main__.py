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


def dashboard_main(argv: list[str]) -> int:
    """``edgepub dashboard [--nats-url URL --user U] [--port N]``: the dashboard against any
    deployment, in the foreground until Ctrl-C. Without ``--nats-url`` it reads the embedded
    stack's directory (``stack.json`` for the servers, ``credentials.json`` for the
    ``dashboard`` user)."""
    import argparse
    import json
    import os

    from edgepub.shared.errors import ConfigError
    from edgepub.shared.stack_file import data_dir, load_stack_info

    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="edgepub dashboard",
        description="The fleet dashboard against any deployment, in the foreground until "
        "Ctrl-C. Without --nats-url it reads the embedded stack's directory (stack.json for "
        "the servers, credentials.json for the dashboard user).",
    )
    p.add_argument(
        "--nats-url", default=env("EDGEPUB_NATS_URL"), help="the bus (a list: a cluster)"
    )
    p.add_argument("--user", default=env("EDGEPUB_NATS_USER"), help="a read-only user: dashboard")
    p.add_argument("--password", default=env("EDGEPUB_NATS_PASSWORD"), help="prefer the env var")
    p.add_argument("--data-dir", help="the embedded stack's directory (without --nats-url)")
    p.add_argument("--host", default=env("EDGEPUB_DASHBOARD_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("EDGEPUB_DASHBOARD_PORT", "8471")))
    args = p.parse_args(argv)
    url, user, password = args.nats_url, args.user, args.password
    if not url:
        home = data_dir(args.data_dir)
        try:
            info = load_stack_info(home)
            users = json.loads((home / "credentials.json").read_bytes())["nats_users"]
        except ConfigError as exc:
            print(f"edgepub dashboard: {exc.message}")
            return 2
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"edgepub dashboard: {home}/credentials.json has no dashboard user ({exc!r})")
            return 2
        url, user, password = info.nats_url, NAME, users.get(NAME)
    os.environ.update(
        EDGEPUB_NATS_URL=url,
        EDGEPUB_DASHBOARD_HOST=args.host,
        EDGEPUB_DASHBOARD_PORT=str(args.port),
        **({"EDGEPUB_NATS_USER": user} if user else {}),
        **({"EDGEPUB_NATS_PASSWORD": password} if password else {}),
    )
    main()
    return 0


if __name__ == "__main__":
    main()
