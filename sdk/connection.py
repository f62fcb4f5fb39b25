"""Finding the bus: explicit arguments, then EDGEPUB_NATS_* variables, then a running
embedded stack's stack.json."""

from __future__ import annotations

from pathlib import Path

from edgepub.shared.settings import Env, NatsSettings


def resolve(
    nats_url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    data_dir: str | Path | None = None,
    env: Env | None = None,
) -> NatsSettings:
    env = env or Env()
    url = nats_url or env.optional("EDGEPUB_NATS_URL")
    if url:
        return NatsSettings(
            url=url,
            user=user or env.optional("EDGEPUB_NATS_USER"),
            password=password or env.optional("EDGEPUB_NATS_PASSWORD"),
        )
    from edgepub.shared.stack_file import load_stack_info

    info = load_stack_info(data_dir)
    return NatsSettings(
        url=info.nats_url,
        user=user or info.sdk_user,
        password=password or info.sdk_password,
    )
