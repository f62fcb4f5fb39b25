"""A NATS URL may list a cluster's servers: parsed, checked, and each bad one named."""

from __future__ import annotations

import pytest

from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env, NatsSettings, servers_of


def test_one_server_or_a_list() -> None:
    assert servers_of("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert servers_of(" nats://a:1, tls://b:2 ,nats://c:3,") == [
        "nats://a:1",
        "tls://b:2",
        "nats://c:3",
    ]
    assert servers_of("127.0.0.1:4222") == ["nats://127.0.0.1:4222"]  # nats-py's default
    assert servers_of("ws://a/edge,wss://b/edge") == ["ws://a/edge", "wss://b/edge"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "no server"),
        (" , ", "no server"),
        ("http://a:1", "'http://a:1': use nats://"),
        ("nats://a:1,ws://b:2", "mixes WebSocket"),
    ],
)
def test_a_bad_list_is_refused_naming_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        servers_of(url)
    if url.strip(" ,"):
        with pytest.raises(ConfigError, match="EDGEPUB_NATS_URL"):
            NatsSettings.from_env(Env({"EDGEPUB_NATS_URL": url}))


def test_settings_carry_the_list() -> None:
    env = Env({"EDGEPUB_NATS_URL": "nats://127.0.0.1:1,nats://127.0.0.1:2"})
    assert NatsSettings.from_env(env).servers == ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
