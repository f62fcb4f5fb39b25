"""registry-push settings, from the environment.

EDGEPUB_REGISTRY* (see ``RegistrySettings``) plus:

- ``EDGEPUB_CACHE_DIR``: where model files are cached by sha256
  (default ``<tmp>/edgepub-cache/models``).
- ``EDGEPUB_ACK_WAIT_S``: how long JetStream waits before redelivering a message whose
  handler died (default 30; the runner heartbeats while a push is in progress).
- ``EDGEPUB_REGISTRY_TIMEOUT_S``: per-request timeout towards the registry (default 30).
- ``EDGEPUB_REGISTRY_RETRY_MAX_S``: longest wait between attempts while the registry is
  unreachable (default 10; the first waits are 0.5, 1, 2, 4, ... s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec

from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env, RegistrySettings


def default_cache_dir() -> str:
    return str(Path(tempfile.gettempdir()) / "edgepub-cache" / "models")


class PushSettings(msgspec.Struct, frozen=True, kw_only=True):
    registry: RegistrySettings
    cache_dir: str
    ack_wait_s: float = 30.0
    request_timeout_s: float = 30.0
    retry_max_s: float = 10.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> PushSettings:
        env = env or Env()
        out = cls(
            registry=RegistrySettings.from_env(env),
            cache_dir=env.text("EDGEPUB_CACHE_DIR", default_cache_dir()),
            ack_wait_s=env.number("EDGEPUB_ACK_WAIT_S", 30.0),
            request_timeout_s=env.number("EDGEPUB_REGISTRY_TIMEOUT_S", 30.0),
            retry_max_s=env.number("EDGEPUB_REGISTRY_RETRY_MAX_S", 10.0),
        )
        for name, value in (
            ("EDGEPUB_ACK_WAIT_S", out.ack_wait_s),
            ("EDGEPUB_REGISTRY_TIMEOUT_S", out.request_timeout_s),
            ("EDGEPUB_REGISTRY_RETRY_MAX_S", out.retry_max_s),
            ("EDGEPUB_REGISTRY_DEADLINE_S", out.registry.deadline_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value:g} must be more than 0 seconds")
        return out
