"""Settings read from the environment. A bad value stops the start with a message that
names the variable, the value and what was expected."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from .errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    """Typed reads from one environment mapping (``os.environ`` unless given)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ

    def text(self, name: str, default: str | None = None) -> str:
        value = self._env.get(name)
        if value is None or value == "":
            if default is None:
                raise ConfigError(f"{name} is not set; it is required")
            return default
        return value

    def optional(self, name: str) -> str | None:
        value = self._env.get(name)
        return value if value else None

    def integer(self, name: str, default: int) -> int:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None

    def number(self, name: str, default: float) -> float:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None:
            return default
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


_NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


class NatsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``url`` is one server or a comma-separated list of a cluster's (a client connects
    to any and moves to another when its node goes away)."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None

    @property
    def servers(self) -> list[str]:
        return servers_of(self.url)

    @classmethod
    def from_env(cls, env: Env | None = None) -> NatsSettings:
        env = env or Env()
        url = env.text("EDGEPUB_NATS_URL", cls.url)
        try:
            servers_of(url)
        except ValueError as exc:
            raise ConfigError(f"EDGEPUB_NATS_URL={url!r}: {exc}") from None
        return cls(
            url=url,
            user=env.optional("EDGEPUB_NATS_USER"),
            password=env.optional("EDGEPUB_NATS_PASSWORD"),
        )


def servers_of(url: str) -> list[str]:
    """The servers of a comma-separated list: each ``nats://`` (also without a scheme),
    ``tls://`` (TCP) or ``ws://``, ``wss://`` (WebSocket), not both kinds (a client speaks
    one)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("no server given")
    servers = [s if "://" in s else f"nats://{s}" for s in servers]
    for server in servers:
        if not server.startswith(_NATS_SCHEMES):
            raise ValueError(f"{server!r}: use nats://, tls://, ws:// or wss://")
    websocket = {server.startswith(("ws://", "wss://")) for server in servers}
    if len(websocket) > 1:
        raise ValueError("mixes WebSocket (ws://, wss://) and TCP (nats://, tls://) servers")
    return servers


class RegistrySettings(msgspec.Struct, frozen=True, kw_only=True):
    """The edge registry: any OCI registry (distribution, Harbor, zot, GHCR...)."""

    registry: str  # host[:port]
    repository: str = "edgepub"
    username: str | None = None
    password: str | None = None
    email: str | None = None
    insecure: bool = False  # plain HTTP
    deadline_s: float = 600.0  # how long after a push request was stored any failure is retried
    engine_image: str = "edgepub-edge:0.1.0"

    @classmethod
    def from_env(cls, env: Env | None = None) -> RegistrySettings:
        env = env or Env()
        registry = env.text("EDGEPUB_REGISTRY")
        if "/" in registry or "://" in registry:
            raise ConfigError(
                f"EDGEPUB_REGISTRY={registry!r} must be host[:port] only; "
                "put the path in EDGEPUB_REGISTRY_REPOSITORY"
            )
        host = registry.split(":")[0]
        return cls(
            registry=registry,
            repository=env.text("EDGEPUB_REGISTRY_REPOSITORY", "edgepub").strip("/"),
            username=env.optional("EDGEPUB_REGISTRY_USERNAME"),
            password=env.optional("EDGEPUB_REGISTRY_PASSWORD"),
            email=env.optional("EDGEPUB_REGISTRY_EMAIL"),
            insecure=env.flag("EDGEPUB_REGISTRY_INSECURE", host in {"127.0.0.1", "localhost"}),
            deadline_s=env.number("EDGEPUB_REGISTRY_DEADLINE_S", 600.0),
            engine_image=env.text("EDGEPUB_ENGINE_IMAGE", "edgepub-edge:0.1.0"),
        )


class LogSettings(msgspec.Struct, frozen=True, kw_only=True):
    format: str = "auto"  # json | console | auto (console on a TTY)
    level: str = "info"

    @classmethod
    def from_env(cls, env: Env | None = None) -> LogSettings:
        env = env or Env()
        fmt = env.text("EDGEPUB_LOG_FORMAT", "auto")
        if fmt not in {"json", "console", "auto"}:
            raise ConfigError(f"EDGEPUB_LOG_FORMAT={fmt!r} must be json, console or auto")
        level = env.text("EDGEPUB_LOG_LEVEL", "info").lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ConfigError(f"EDGEPUB_LOG_LEVEL={level!r} must be debug, info, warning or error")
        return cls(format=fmt, level=level)
