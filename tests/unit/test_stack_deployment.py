"""The container deployment's files (``deployment.render``): what compose and Helm mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.services.stack import config
from edgepub.services.stack.binaries import find_nats_server
from edgepub.services.stack.catalog import SERVICES
from edgepub.services.stack.deployment import (
    Node,
    Topology,
    env_file,
    format_env,
    node_file,
    parse_env,
    render,
)
from edgepub.services.stack.render import render_main
from edgepub.shared.errors import ConfigError
from edgepub.shared.stack_file import StackInfo

CREDS = config.generate_credentials()
THREE = Topology(nodes=(Node(host="nats-0"), Node(host="nats-1"), Node(host="nats-2")))

keys_ = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True)
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"))


@given(st.dictionaries(keys_, values, max_size=8))
def test_env_files_read_back_what_was_written(env: dict[str, str]) -> None:
    assert parse_env(format_env(env)) == env


@pytest.mark.parametrize("line", ["lower=1", "A B=1", "A='unclosed", "A=two words", "=x"])
def test_a_bad_env_line_is_refused_naming_its_line(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_env(f"OK=1\n{line}\n")


def test_node_addresses_parse_and_refuse() -> None:
    assert Node.parse("nats-1") == Node(host="nats-1")
    assert Node.parse("127.0.0.1:1:2:3:4") == Node(
        host="127.0.0.1", client=1, route=2, edge=3, monitor=4
    )
    for bad in ("", ":4222", "h:x", "h:1:2:3:4:5"):
        with pytest.raises(ValueError, match="host"):
            Node.parse(bad)


def test_every_service_gets_its_own_user_every_node_and_three_replicas() -> None:
    files = render(CREDS, THREE)
    for spec in SERVICES:
        env = parse_env(files[env_file(spec.name)])
        assert env["EDGEPUB_NATS_USER"] == spec.nats_user
        assert env["EDGEPUB_NATS_PASSWORD"] == CREDS.nats_users[spec.nats_user]
        assert env["EDGEPUB_NATS_URL"] == "nats://nats-0:4222,nats://nats-1:4222,nats://nats-2:4222"
        assert env["EDGEPUB_REPLICAS"] == "3"
        assert env["EDGEPUB_REGISTRY"] == "registry:5000"
        assert ("EDGEPUB_AUTH_ISSUER_SEED" in env) == (spec.name == "token")
    info = msgspec.json.decode(files["stack.json"], type=StackInfo)
    assert info.sdk_password == CREDS.nats_users[CREDS.sdk_user]


def test_one_node_is_no_cluster_and_keeps_one_replica() -> None:
    files = render(CREDS, Topology())
    assert "cluster {" not in files[node_file(0)]
    assert parse_env(files[env_file("publish")])["EDGEPUB_REPLICAS"] == "1"


def test_each_node_config_routes_to_the_others_and_nats_server_accepts_it(
    tmp_path: Path,
) -> None:
    files = render(CREDS, THREE)
    for i in range(3):
        text = files[node_file(i)]
        assert f'server_name: "edgepub-{i}"' in text
        others = {f"nats-{j}:6222" for j in range(3) if j != i}
        assert {o for o in others if o in text} == others and f"@nats-{i}:" not in text
        path = tmp_path / node_file(i)
        path.write_text(text.replace("/data/jetstream", str(tmp_path / "js")))
        check = subprocess.run(
            [find_nats_server(), "-t", "-c", str(path)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr


DASHBOARD_NAMES = {"EDGEPUB_DASHBOARD_HOST", "EDGEPUB_DASHBOARD_PORT"}


def test_the_dashboard_listens_on_all_addresses_on_the_topologys_port() -> None:
    host_network = Topology(listen="127.0.0.1", dashboard_port=18470)
    for topo, host, port in ((THREE, "0.0.0.0", "8470"), (host_network, "127.0.0.1", "18470")):
        files = render(CREDS, topo)
        env = parse_env(files[env_file("dashboard")])
        assert env["EDGEPUB_DASHBOARD_HOST"] == host
        assert env["EDGEPUB_DASHBOARD_PORT"] == port
        assert env["EDGEPUB_NATS_USER"] == "dashboard"
        for spec in SERVICES:
            if spec.name != "dashboard":
                assert not DASHBOARD_NAMES & parse_env(files[env_file(spec.name)]).keys()


def test_render_takes_the_dashboard_port_and_refuses_a_bad_one(tmp_path: Path) -> None:
    out = tmp_path / "config"
    assert render_main(["--out", str(out), "--dashboard-port", "9470"]) == 0
    env = parse_env((out / env_file("dashboard")).read_text())
    assert env["EDGEPUB_DASHBOARD_PORT"] == "9470"
    assert render_main(["--out", str(out)]) == 0  # re-rendered: the default again
    assert parse_env((out / env_file("dashboard")).read_text())["EDGEPUB_DASHBOARD_PORT"] == "8470"
    for bad in ("0", "65536"):
        with pytest.raises(ConfigError, match="--dashboard-port"):
            render_main(["--out", str(out), "--dashboard-port", bad])
