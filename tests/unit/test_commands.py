"""Docker/Podman/Helm command rendering (SDK-COMPAT 6-7) and memory units; the `edgepub`
command's help, plain text."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.cli import build_parser
from edgepub.commands import (
    LINE_BREAK,
    EngineResources,
    bytes_to_docker,
    docker_run_command,
    engine_resources,
    flatten_helm_values,
    helm_install_command,
    kube_memory_to_docker,
    parse_kube_quantity,
    podman_run_command,
    registry_host,
)
from edgepub.deployment_config import DeploymentConfigBuilder
from edgepub.services.stack.up import build_parser as up_parser
from edgepub.shared.errors import InvalidRequestError

PIPELINE = "127.0.0.1:5000/edgepub/pipelines/house:6c3d9899-1335-456b-aaa0-52d03a017cc4"
ENGINE = "127.0.0.1:5000/edgepub/engine:0.1.0"
BUNDLE = "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEK+/=="


def _config(cpu: float, memory: str) -> dict[str, Any]:
    return DeploymentConfigBuilder().cpus(cpu).memory(memory).build()


def _argv(command: str) -> list[str]:
    """What a shell would run: continuation lines joined, words split and unquoted."""
    return shlex.split(command.replace("\\\n", " "))


# --- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "docker"),
    [
        ("512Mi", "512m"),
        ("1Gi", "1g"),
        ("1.5Gi", "1536m"),
        ("900Mi", "900m"),
        ("3Gi", "3g"),
        ("2Ti", "2048g"),
        ("1Ki", "1k"),
        ("1024", "1k"),
        ("900M", "900000000"),
        ("1000", "1000"),
    ],
)
def test_kube_memory_to_docker(quantity: str, docker: str) -> None:
    assert kube_memory_to_docker(quantity) == docker


def _docker_bytes(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    if value[-1] in units:
        return int(value[:-1]) * units[value[-1]]
    return int(value)


@given(
    st.integers(min_value=1, max_value=10**6),
    st.sampled_from(["", "k", "Ki", "M", "Mi", "G", "Gi", "Ti"]),
)
def test_docker_memory_round_trips(n: int, unit: str) -> None:
    quantity = f"{n}{unit}"
    docker = kube_memory_to_docker(quantity)
    assert _docker_bytes(docker) == parse_kube_quantity(quantity)
    assert docker[-1] in "kmg0123456789"


@given(st.integers(min_value=1, max_value=2**50))
def test_bytes_to_docker_uses_the_largest_exact_unit(n: int) -> None:
    docker = bytes_to_docker(n)
    assert _docker_bytes(docker) == n
    if docker[-1] in "km":  # a bigger unit would not have been exact
        bigger = {"k": 1024**2, "m": 1024**3}[docker[-1]]
        assert n % bigger != 0


# --- engine resources ---------------------------------------------------------------------


def test_engine_resources_defaults() -> None:
    assert engine_resources({}) == EngineResources(
        engine_cpus=1.0, cpus=1.0, memory_bytes=2**30, gpu=False
    )


def test_engine_resources_of_a_seed_config() -> None:
    config = {
        "engine": {
            "resources": {
                "limits": {"cpu": 4.0, "memory": "3Gi"},
                "requests": {"cpu": 4.0, "memory": "3Gi"},
                "gpu": False,
            }
        },
        "engineAux": {"autoscale": {"type": "none"}, "images": None},
        "enginelb": {"resources": {"limits": {"cpu": 1.0, "memory": "512Mi"}}},
    }
    assert engine_resources(config) == EngineResources(4.0, 4.0, 3 * 2**30, False)


def test_engine_resources_sum_aux_images_and_see_gpus() -> None:
    config = DeploymentConfigBuilder().cpus(1).memory("1Gi").gpus(1).build()
    config["engineAux"]["images"]["sidekick"] = {
        "resources": {"limits": {"cpu": "250m", "memory": "512Mi"}}
    }
    assert engine_resources(config) == EngineResources(1.0, 1.25, 1536 * 2**20, True)


def test_engine_resources_refuse_bad_values() -> None:
    with pytest.raises(InvalidRequestError):
        engine_resources({"engine": {"resources": {"limits": {"memory": "lots"}}}})


# --- docker / podman ----------------------------------------------------------------------


def test_reproduces_the_seed_docker_example() -> None:
    # The seed: engine 1 CPU; pipeline 1.25 CPUs, 1536m, GPUs.
    config = DeploymentConfigBuilder().cpus(1.0).memory("1Gi").gpus(1).build()
    config["engineAux"]["images"]["aux"] = {
        "resources": {"limits": {"cpu": 0.25, "memory": "512Mi"}}
    }
    command = docker_run_command(
        pipeline_url="sample-pipeline-url", engine_url="sample-engine-url", engine_config=config
    )
    assert command == (
        "docker run \\\n"
        "    -p $EDGE_PORT:8080 \\\n"
        "    -e OCI_USERNAME=$OCI_USERNAME \\\n"
        "    -e OCI_PASSWORD=$OCI_PASSWORD \\\n"
        "    -e PIPELINE_URL=sample-pipeline-url \\\n"
        "    -e CONFIG_CPUS=1.0 --gpus all --cpus=1.25 --memory=1536m \\\n"
        "    sample-engine-url"
    )


def test_no_edge_form() -> None:
    command = docker_run_command(
        pipeline_url=PIPELINE, engine_url=ENGINE, engine_config=_config(0.5, "900Mi")
    )
    assert command == LINE_BREAK.join(
        [
            "docker run",
            "-p $EDGE_PORT:8080",
            "-e OCI_USERNAME=$OCI_USERNAME",
            "-e OCI_PASSWORD=$OCI_PASSWORD",
            f"-e PIPELINE_URL={PIPELINE}",
            "-e OCI_REGISTRY=127.0.0.1:5000",
            "-e CONFIG_CPUS=1.0 --cpus=0.5 --memory=900m",
            ENGINE,
        ]
    )


def test_edge_form_has_the_volume_and_the_bundle() -> None:
    command = docker_run_command(
        pipeline_url=PIPELINE,
        engine_url=ENGINE,
        engine_config=_config(4.0, "3Gi"),
        edge_bundle=BUNDLE,
    )
    lines = command.split(LINE_BREAK)
    assert lines[0] == "docker run -v $PERSISTENT_VOLUME_DIR:/persist"
    assert lines[4:7] == [
        f"-e PIPELINE_URL={PIPELINE}",
        f"-e EDGE_BUNDLE={BUNDLE}",
        "-e OCI_REGISTRY=127.0.0.1:5000",
    ]
    assert lines[-2] == "-e CONFIG_CPUS=4 --cpus=4.0 --memory=3g"


def test_seed_edge_shape_with_the_missing_space_fixed() -> None:
    # The seed's replace example, line by line (its older engine had no -p nor CONFIG_CPUS).
    pipeline = (
        "ghcr.io/wallaroolabs/doc-samples/pipelines/edge-inline-replacement-demo:"
        "446aeed9-2d52-47ae-9e5c-f2a05ef0d4d6"
    )
    engine = (
        "ghcr.io/wallaroolabs/doc-samples/engines/proxy/wallaroo/ghcr.io/wallaroolabs/"
        "fitzroy-mini:v2024.1.0-main-4781"
    )
    command = docker_run_command(
        pipeline_url=pipeline, engine_url=engine, engine_config={}, edge_bundle=BUNDLE
    )
    seed_lines = [
        "docker run -v $PERSISTENT_VOLUME_DIR:/persist \\",
        "    -e OCI_USERNAME=$OCI_USERNAME \\",
        "    -e OCI_PASSWORD=$OCI_PASSWORD \\",
        f"    -e PIPELINE_URL={pipeline} \\",
        f"    -e EDGE_BUNDLE={BUNDLE} \\",
        f"    {engine}",
    ]
    ours = command.split("\n")
    assert [line for line in ours if line in seed_lines] == seed_lines
    assert "    -e OCI_REGISTRY=ghcr.io \\" in ours


@pytest.mark.parametrize(
    ("cpu", "config_cpus", "docker_cpus"),
    [(0.5, "1.0", "0.5"), (1, "1.0", "1.0"), (1.25, "2", "1.25"), (4.0, "4", "4.0")],
)
def test_config_cpus_is_wallaroos_max_one_ceil(
    cpu: float, config_cpus: str, docker_cpus: str
) -> None:
    command = docker_run_command(
        pipeline_url=PIPELINE, engine_url=ENGINE, engine_config=_config(cpu, "1Gi")
    )
    assert f"-e CONFIG_CPUS={config_cpus} --cpus={docker_cpus} --memory=1g" in command


def test_unset_engine_config_gets_one_cpu_and_1gi() -> None:
    command = docker_run_command(pipeline_url=PIPELINE, engine_url=ENGINE, engine_config={})
    assert "-e CONFIG_CPUS=1.0 --cpus=1.0 --memory=1g" in command


def test_gpu_flag_explicit_or_from_config() -> None:
    plain = _config(1, "1Gi")
    assert "--gpus all" not in docker_run_command(
        pipeline_url=PIPELINE, engine_url=ENGINE, engine_config=plain
    )
    assert "--gpus all --cpus" in docker_run_command(
        pipeline_url=PIPELINE, engine_url=ENGINE, engine_config=plain, gpu=True
    )
    gpu_config = {"engine": {"resources": {"limits": {"cpu": 1}, "gpu": True}}}
    assert "--gpus all" in docker_run_command(
        pipeline_url=PIPELINE, engine_url=ENGINE, engine_config=gpu_config
    )
    assert "--gpus all" not in docker_run_command(
        pipeline_url=PIPELINE, engine_url=ENGINE, engine_config=gpu_config, gpu=False
    )


def test_podman_is_the_same_with_a_cdi_gpu_device() -> None:
    kwargs: dict[str, Any] = {
        "pipeline_url": PIPELINE,
        "engine_url": ENGINE,
        "engine_config": _config(2, "2Gi"),
        "edge_bundle": BUNDLE,
        "gpu": True,
    }
    docker = docker_run_command(**kwargs)
    podman = podman_run_command(**kwargs)
    assert podman.startswith("podman run -v $PERSISTENT_VOLUME_DIR:/persist \\\n")
    assert "--device nvidia.com/gpu=all --cpus=2.0" in podman
    assert (
        podman.replace("podman run", "docker run").replace(
            "--device nvidia.com/gpu=all", "--gpus all"
        )
        == docker
    )


def test_every_line_but_the_last_continues() -> None:
    command = docker_run_command(
        pipeline_url=PIPELINE, engine_url=ENGINE, engine_config={}, edge_bundle=BUNDLE
    )
    lines = command.split("\n")
    assert all(line.endswith(" \\") for line in lines[:-1])
    assert all(line.startswith("    ") for line in lines[1:])
    assert not lines[-1].endswith("\\")


def test_hostile_values_stay_one_word() -> None:
    url = "reg.example.com/p:v; rm -rf / #"
    command = docker_run_command(pipeline_url=url, engine_url="e $(id)", engine_config={})
    argv = _argv(command)
    assert f"PIPELINE_URL={url}" in argv
    assert argv[-1] == "e $(id)"


def test_docker_argv() -> None:
    argv = _argv(
        docker_run_command(
            pipeline_url=PIPELINE, engine_url=ENGINE, engine_config={}, edge_bundle=BUNDLE
        )
    )
    assert argv[:4] == ["docker", "run", "-v", "$PERSISTENT_VOLUME_DIR:/persist"]
    assert argv[-1] == ENGINE
    env = [argv[i + 1] for i, word in enumerate(argv) if word == "-e"]
    assert env == [
        "OCI_USERNAME=$OCI_USERNAME",
        "OCI_PASSWORD=$OCI_PASSWORD",
        f"PIPELINE_URL={PIPELINE}",
        f"EDGE_BUNDLE={BUNDLE}",
        "OCI_REGISTRY=127.0.0.1:5000",
        "CONFIG_CPUS=1.0",
    ]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        (PIPELINE, "127.0.0.1:5000"),
        ("ghcr.io/wallaroolabs/doc-samples/pipelines/p:v", "ghcr.io"),
        ("oci://localhost/charts/p", "localhost"),
        ("https://reg.example.com/x", "reg.example.com"),
        ("sample-pipeline-url", ""),
        ("library/ubuntu:22.04", ""),
    ],
)
def test_registry_host(url: str, host: str) -> None:
    assert registry_host(url) == host


# --- helm ---------------------------------------------------------------------------------


def test_reproduces_the_seed_helm_upgrade() -> None:
    bundle = "ZXhwb3J0IEJVTkRMRV9WRVJTSU9OPTEKZXhwb3J0IE9DSV9SRUdJU1RSWT1naGNyLmlv"
    command = helm_install_command(
        chart_url="oci://ghcr.io/wallaroolabs/doc-samples/charts/edge-inline-replacement-demo",
        chart_version="0.0.1-446aeed9-2d52-47ae-9e5c-f2a05ef0d4d6",
        helm_values={},
        edge_bundle=bundle,
        upgrade=True,
    )
    assert command == (
        "helm upgrade $HELM_INSTALL_NAME \\\n"
        "    oci://ghcr.io/wallaroolabs/doc-samples/charts/edge-inline-replacement-demo \\\n"
        "    --namespace $HELM_INSTALL_NAMESPACE \\\n"
        "    --version 0.0.1-446aeed9-2d52-47ae-9e5c-f2a05ef0d4d6 \\\n"
        "    --set ociRegistry.username=$OCI_USERNAME \\\n"
        "    --set ociRegistry.password=$OCI_PASSWORD \\\n"
        f"    --set edgeBundle={bundle}"
    )


@pytest.mark.parametrize(
    "chart", ["127.0.0.1:5000/edgepub/charts/p", "oci://127.0.0.1:5000/edgepub/charts/p"]
)
def test_helm_install_has_exactly_one_oci_prefix(chart: str) -> None:
    command = helm_install_command(chart_url=chart, chart_version="0.0.1-v", helm_values=None)
    assert command == LINE_BREAK.join(
        [
            "helm install --atomic $HELM_INSTALL_NAME",
            "oci://127.0.0.1:5000/edgepub/charts/p",
            "--namespace $HELM_INSTALL_NAMESPACE",
            "--version 0.0.1-v",
            "--set ociRegistry.username=$OCI_USERNAME",
            "--set ociRegistry.password=$OCI_PASSWORD",
        ]
    )


def test_helm_values_are_flattened_in_order() -> None:
    command = helm_install_command(
        chart_url="r.io/charts/p",
        chart_version="1",
        helm_values={
            "pipelineUrl": PIPELINE,
            "ociRegistry": {"registry": "r.io", "username": "u", "password": "secret"},
            "engine": {"resources": {"cpu": 1.5}, "gpu": False},
            "empty": {},
        },
    )
    assert command.split(LINE_BREAK)[6:] == [
        f"--set pipelineUrl={PIPELINE}",
        "--set ociRegistry.registry=r.io",
        "--set engine.resources.cpu=1.5",
        "--set engine.gpu=false",
    ]
    assert "secret" not in command


def test_edge_bundle_overrides_a_bundle_in_values() -> None:
    command = helm_install_command(
        chart_url="r.io/charts/p",
        chart_version="1",
        helm_values={"edgeBundle": "old", "x": 1},
        edge_bundle="new",
    )
    assert command.startswith("helm install --atomic ")
    assert command.endswith("--set x=1" + LINE_BREAK + "--set edgeBundle=new")
    assert "old" not in command
    kept = helm_install_command(
        chart_url="r.io/charts/p", chart_version="1", helm_values={"edgeBundle": "old"}
    )
    assert kept.endswith("--set edgeBundle=old")


def test_flatten_helm_values() -> None:
    assert flatten_helm_values(
        {"a": {"b": 1, "c.d": True}, "l": [1, "x"], "n": None, "s": "a,b"}
    ) == [
        ("a.b", "1"),
        ("a.c\\.d", "true"),
        ("l", "{1,x}"),
        ("n", "null"),
        ("s", "a\\,b"),
    ]


def test_helm_values_needing_quotes_survive_the_shell() -> None:
    command = helm_install_command(
        chart_url="r.io/charts/p", chart_version="1", helm_values={"a.b": "x y", "l": [1, 2]}
    )
    argv = _argv(command)
    assert "a\\.b=x y" in argv
    assert "l={1,2}" in argv


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True), st.integers()))
def test_every_flat_value_is_set_once(values: dict[str, int]) -> None:
    command = helm_install_command(chart_url="r.io/c/p", chart_version="1", helm_values=values)
    argv = _argv(command)
    sets = [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]
    assert sets[:2] == ["ociRegistry.username=$OCI_USERNAME", "ociRegistry.password=$OCI_PASSWORD"]
    assert sets[2:] == [f"{k}={v}" for k, v in values.items()]


# --- the edgepub command's help -------------------------------------------------------------


def _verbs(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``parser`` and every verb below it: (), ("model",), ("model", "upload")..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, (*path, name))


VERBS = [path for path, _ in _verbs(build_parser())]
CLI = "from edgepub.cli import main; main()"


def test_help_texts_are_plain() -> None:
    """argparse prints descriptions and help as written: no reST ``literals`` in them."""
    assert ("up",) in VERBS and ("pipeline", "publish") in VERBS
    for path, parser in _verbs(build_parser()):
        assert "`" not in parser.format_help(), path
    assert "`" not in up_parser().format_help()


def test_every_help_printed_has_no_backticks() -> None:
    """``edgepub [verb...] --help`` as real processes (``up`` prints its own, fuller help)."""
    script = Path(sys.executable).with_name("edgepub")
    argv0 = [str(script)] if script.exists() else [sys.executable, "-c", CLI]
    procs = {
        verb: subprocess.Popen(
            [*argv0, *verb, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for verb in VERBS
    }
    for verb, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (verb, err)
        assert out.startswith(f"usage: {' '.join(('edgepub', *verb))}"), (verb, out[:200])
        assert "`" not in out, (verb, out)
