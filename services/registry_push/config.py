"""registry-push settings, from the environment.

EDGEPUB_REGISTRY* (see ``RegistrySettings``) plus:

- ``EDGEPUB_CACHE_DIR``: registry-push's own directory: model files cached by sha256 in
  ``models/``, each chart for as long as it is pushed in ``charts/`` (default
  ``$EDGEPUB_HOME/cache``, else ``~/.edgepub/cache``; ``edgepub up`` gives it
  ``<data dir>/cache``). Made 0700, files 0600: never shared with other stacks or users.
- ``EDGEPUB_CACHE_MAX_BYTES``: the most the model cache keeps, in bytes or as a quantity
  (``1Gi``, ``500M``; default 1 GiB). Least recently used whole files go first, never one a
  push is using; 0 keeps nothing after each push. The cache only saves reading the object
  store (which holds every model) again, so it need not be large.
- ``EDGEPUB_ACK_WAIT_S``: how long JetStream waits before redelivering a message whose
  handler died (default 30; the runner heartbeats while a push is in progress).
- ``EDGEPUB_REGISTRY_TIMEOUT_S``: per-request timeout towards the registry (default 30).
- ``EDGEPUB_REGISTRY_RETRY_MAX_S``: longest wait between attempts after a failure that may
  pass (default 10; the first waits are 0.5, 1, 2, 4, ... s).
- ``EDGEPUB_REGISTRY_DEADLINE_S`` (``RegistrySettings``): no attempt is retried once the
  request is this old (default 600 s, from the JetStream timestamp of the request): its
  publish fails with the last reason, whatever the failure was.
- ``EDGEPUB_PUSH_MAX_DELIVER``: the most times one request is delivered; the publish fails
  with the last reason after that (default: enough retries to reach the deadline, the
  deadline over the longest wait plus 10: 70 with the defaults).
- ``EDGEPUB_PUSH_CONCURRENCY``: pushes at once in this process (default 1). The runner
  fetches only that many requests, so a request waiting its turn stays in the stream.
- ``EDGEPUB_STOP_GRACE_S``: on SIGTERM, how long the pushes in hand may still run before
  they are cancelled (default 20; a cancelled push stops its uploads and comes back to
  whichever registry-push runs next).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec

from edgepub.shared.engine_config import quantity_bytes
from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env, RegistrySettings

DEFAULT_CACHE_MAX_BYTES = 1 << 30


def default_cache_dir(env: Env) -> str:
    """Under the user's edgepub home, like the rest of the stack's state: never a shared
    temporary directory (every stack on the machine would share it, and nothing cleans it)."""
    home = env.optional("EDGEPUB_HOME")
    base = Path(home).expanduser() if home else Path(os.path.expanduser("~")) / ".edgepub"
    return str(base / "cache")


def cache_max_bytes(env: Env) -> int:
    raw = env.optional("EDGEPUB_CACHE_MAX_BYTES")
    if raw is None:
        return DEFAULT_CACHE_MAX_BYTES
    value = quantity_bytes(raw.strip())
    if value is None:
        raise ConfigError(
            f"EDGEPUB_CACHE_MAX_BYTES={raw!r}: expected a number of bytes or a quantity such "
            "as 1Gi or 500M"
        )
    return value


def default_max_deliver(deadline_s: float, retry_max_s: float) -> int:
    """Enough deliveries for retries at the longest wait to reach the deadline, and 10 more
    for the short first waits: the deadline ends a failing push first, the count ends one
    whose attempts never finish (the process dies each time)."""
    return math.ceil(deadline_s / retry_max_s) + 10


class PushSettings(msgspec.Struct, frozen=True, kw_only=True):
    registry: RegistrySettings
    cache_dir: str
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    ack_wait_s: float = 30.0
    request_timeout_s: float = 30.0
    retry_max_s: float = 10.0
    max_deliver: int = 70
    concurrency: int = 1
    stop_grace_s: float = 20.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> PushSettings:
        env = env or Env()
        registry = RegistrySettings.from_env(env)
        retry_max_s = env.number("EDGEPUB_REGISTRY_RETRY_MAX_S", 10.0)
        for name, value in (
            ("EDGEPUB_REGISTRY_RETRY_MAX_S", retry_max_s),
            ("EDGEPUB_REGISTRY_DEADLINE_S", registry.deadline_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value:g} must be more than 0 seconds")
        out = cls(
            registry=registry,
            cache_dir=env.text("EDGEPUB_CACHE_DIR", default_cache_dir(env)),
            cache_max_bytes=cache_max_bytes(env),
            ack_wait_s=env.number("EDGEPUB_ACK_WAIT_S", 30.0),
            request_timeout_s=env.number("EDGEPUB_REGISTRY_TIMEOUT_S", 30.0),
            retry_max_s=retry_max_s,
            max_deliver=env.integer(
                "EDGEPUB_PUSH_MAX_DELIVER", default_max_deliver(registry.deadline_s, retry_max_s)
            ),
            concurrency=env.integer("EDGEPUB_PUSH_CONCURRENCY", 1),
            stop_grace_s=env.number("EDGEPUB_STOP_GRACE_S", 20.0),
        )
        for name, value in (
            ("EDGEPUB_ACK_WAIT_S", out.ack_wait_s),
            ("EDGEPUB_REGISTRY_TIMEOUT_S", out.request_timeout_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name}={value:g} must be more than 0 seconds")
        for name, count in (
            ("EDGEPUB_PUSH_MAX_DELIVER", out.max_deliver),
            ("EDGEPUB_PUSH_CONCURRENCY", out.concurrency),
        ):
            if count < 1:
                raise ConfigError(f"{name}={count} must be at least 1")
        if out.stop_grace_s < 0:
            raise ConfigError(f"EDGEPUB_STOP_GRACE_S={out.stop_grace_s:g} must be 0 or more")
        return out
