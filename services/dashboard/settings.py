"""The dashboard's settings, from the environment (every bad value names itself)."""

from __future__ import annotations

import msgspec

from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env

DEFAULT_PORT = 8470


class DashboardSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"  # EDGEPUB_DASHBOARD_HOST
    port: int = DEFAULT_PORT  # EDGEPUB_DASHBOARD_PORT (0: a free port, logged)
    # the token service's threshold: no heartbeat for longer and an edge is offline
    offline_after_s: float = 30.0  # EDGEPUB_EDGE_OFFLINE_AFTER_S
    backlog_rows: int = 10_000  # EDGEPUB_DASHBOARD_BACKLOG_ROWS: a backlog over it is flagged
    stuck_after_s: float = 600.0  # EDGEPUB_DASHBOARD_STUCK_AFTER_S: Publishing longer is stuck

    @classmethod
    def from_env(cls, env: Env | None = None) -> DashboardSettings:
        env = env or Env()
        d = cls()
        settings = cls(
            host=env.text("EDGEPUB_DASHBOARD_HOST", d.host),
            port=env.integer("EDGEPUB_DASHBOARD_PORT", d.port),
            offline_after_s=env.number("EDGEPUB_EDGE_OFFLINE_AFTER_S", d.offline_after_s),
            backlog_rows=env.integer("EDGEPUB_DASHBOARD_BACKLOG_ROWS", d.backlog_rows),
            stuck_after_s=env.number("EDGEPUB_DASHBOARD_STUCK_AFTER_S", d.stuck_after_s),
        )
        if not 0 <= settings.port <= 65535:
            raise ConfigError(f"EDGEPUB_DASHBOARD_PORT={settings.port} must be 0..65535")
        for name, value in (
            ("EDGEPUB_EDGE_OFFLINE_AFTER_S", settings.offline_after_s),
            ("EDGEPUB_DASHBOARD_STUCK_AFTER_S", settings.stuck_after_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value:g} must be more than 0 seconds")
        if settings.backlog_rows < 0:
            raise ConfigError(
                f"EDGEPUB_DASHBOARD_BACKLOG_ROWS={settings.backlog_rows} must be >= 0"
            )
        return settings
