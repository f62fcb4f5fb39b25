"""The ``docker run``, ``podman run`` and ``helm install/upgrade`` commands shown to DevOps.

Pure string rendering, shaped like Wallaroo's (SDK-COMPAT 6-7): lines joined by
``" \\\\\\n    "``; the resource flags share one line, as in the seed's example::

    docker run \\
        -p $EDGE_PORT:8080 \\
        -e OCI_USERNAME=$OCI_USERNAME \\
        -e OCI_PASSWORD=$OCI_PASSWORD \\
        -e PIPELINE_URL=sample-pipeline-url \\
        -e CONFIG_CPUS=1.0 --gpus all --cpus=1.25 --memory=1536m \\
        sample-engine-url

Departures, all additive: ``-e OCI_REGISTRY=<host>`` follows the Wallaroo variables (our edge
agent reads it; Wallaroo hid it in its bundle), and the edge form keeps ``-e CONFIG_CPUS``
(Wallaroo's bundle carried it; ours does not). Every value that came from data is shell-quoted
when it needs to be; registry URLs, versions and base64 bundles never do.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any, NamedTuple

from .deployment_config import parse_cpu, parse_kube_quantity

__all__ = [
    "DEFAULT_DOCKER_MEMORY",
    "LINE_BREAK",
    "EngineResources",
    "bytes_to_docker",
    "docker_run_command",
    "engine_resources",
    "flatten_helm_values",
    "helm_install_command",
    "kube_memory_to_docker",
    "parse_kube_quantity",
    "podman_run_command",
    "registry_host",
]

LINE_BREAK = " \\\n    "
DEFAULT_DOCKER_MEMORY = "1Gi"  # Wallaroo's when the engine config names none
_DEFAULT_CPUS = 1.0  # Wallaroo's builder default; "--cpus=0.0" would mean "no limit"
_DOCKER_UNITS = (("g", 1024**3), ("m", 1024**2), ("k", 1024))
_GPU_KEYS = ("nvidia.com/gpu", "gpu.intel.com/i915")


class EngineResources(NamedTuple):
    """What the run commands need from an engine config."""

    engine_cpus: float  # the inference engine's own share: CONFIG_CPUS
    cpus: float  # engine plus auxiliary images: --cpus
    memory_bytes: int  # engine plus auxiliary images: --memory
    gpu: bool


def bytes_to_docker(n: int) -> str:
    """Bytes as a Docker ``--memory`` value in the largest exact unit: 1536 MiB -> ``1536m``."""
    for unit, size in _DOCKER_UNITS:
        if n > 0 and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def kube_memory_to_docker(quantity: str) -> str:
    """A Kubernetes memory quantity as Docker writes it: ``512Mi`` -> ``512m``, ``1Gi`` -> ``1g``,
    ``1.5Gi`` -> ``1536m``; a size that is no whole number of KiB stays in bytes."""
    return bytes_to_docker(parse_kube_quantity(quantity))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _stanza_resources(stanza: Mapping[str, Any]) -> tuple[float | None, int | None, bool]:
    resources = _mapping(stanza.get("resources"))
    limits = _mapping(resources.get("limits"))
    cpu = limits.get("cpu", stanza.get("cpu"))
    memory = limits.get("memory")
    gpu = bool(resources.get("gpu")) or _positive(stanza.get("gpu"))
    gpu = gpu or any(_positive(limits.get(key)) for key in _GPU_KEYS)
    return (
        None if cpu is None else parse_cpu(cpu, what="engine cpu"),
        None if memory is None else parse_kube_quantity(str(memory)),
        gpu,
    )


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def engine_resources(engine_config: Mapping[str, Any]) -> EngineResources:
    """CPU, memory and GPU of a publish's engine config, auxiliary images summed in as
    Wallaroo does. Missing values: 1 CPU, 1Gi. Raises InvalidRequestError on a bad value."""
    engine_cpu, engine_mem, gpu = _stanza_resources(_mapping(engine_config.get("engine")))
    engine_cpus = _DEFAULT_CPUS if engine_cpu is None else engine_cpu
    cpus = engine_cpus
    memory = parse_kube_quantity(DEFAULT_DOCKER_MEMORY) if engine_mem is None else engine_mem
    images = _mapping(_mapping(engine_config.get("engineAux")).get("images"))
    for image in images.values():
        aux_cpu, aux_mem, aux_gpu = _stanza_resources(_mapping(image))
        cpus += aux_cpu or 0.0
        memory += aux_mem or 0
        gpu = gpu or aux_gpu
    return EngineResources(engine_cpus=engine_cpus, cpus=cpus, memory_bytes=memory, gpu=gpu)


def registry_host(url: str) -> str:
    """The registry host of an image or artifact reference, or "" when it names none
    (``127.0.0.1:5000/edgepub/pipelines/p:v`` -> ``127.0.0.1:5000``)."""
    for scheme in ("oci://", "https://", "http://"):
        url = url.removeprefix(scheme)
    host, slash, _ = url.partition("/")
    if slash and ("." in host or ":" in host or host == "localhost"):
        return host
    return ""


def _config_cpus(engine_cpus: float) -> str:
    # Wallaroo's max(1.0, ceil(cpu)), printed as Python prints it: "1.0" up to one core, then "4".
    return str(max(1.0, math.ceil(engine_cpus)))


def _docker_cpus(cpus: float) -> str:
    return repr(float(round(cpus, 3)))


def _run_command(
    tool: str,
    gpu_flag: str,
    *,
    pipeline_url: str,
    engine_url: str,
    engine_config: Mapping[str, Any],
    edge_bundle: str | None,
    gpu: bool | None,
) -> str:
    res = engine_resources(engine_config)
    use_gpu = res.gpu if gpu is None else gpu
    lines = [
        f"{tool} run -v $PERSISTENT_VOLUME_DIR:/persist" if edge_bundle else f"{tool} run",
        "-p $EDGE_PORT:8080",
        "-e OCI_USERNAME=$OCI_USERNAME",
        "-e OCI_PASSWORD=$OCI_PASSWORD",
        f"-e PIPELINE_URL={shlex.quote(pipeline_url)}",
    ]
    if edge_bundle:
        lines.append(f"-e EDGE_BUNDLE={shlex.quote(edge_bundle)}")
    registry = registry_host(pipeline_url)
    if registry:
        lines.append(f"-e OCI_REGISTRY={shlex.quote(registry)}")
    flags = [f"-e CONFIG_CPUS={_config_cpus(res.engine_cpus)}"]
    if use_gpu:
        flags.append(gpu_flag)
    flags += [f"--cpus={_docker_cpus(res.cpus)}", f"--memory={bytes_to_docker(res.memory_bytes)}"]
    lines += [" ".join(flags), shlex.quote(engine_url)]
    return LINE_BREAK.join(lines)


def docker_run_command(
    *,
    pipeline_url: str,
    engine_url: str,
    engine_config: Mapping[str, Any],
    edge_bundle: str | None = None,
    gpu: bool | None = None,
) -> str:
    """The ``docker run`` of a publish; with ``edge_bundle``, the observability form with the
    persistent volume. ``gpu=None`` reads the engine config."""
    return _run_command(
        "docker",
        "--gpus all",
        pipeline_url=pipeline_url,
        engine_url=engine_url,
        engine_config=engine_config,
        edge_bundle=edge_bundle,
        gpu=gpu,
    )


def podman_run_command(
    *,
    pipeline_url: str,
    engine_url: str,
    engine_config: Mapping[str, Any],
    edge_bundle: str | None = None,
    gpu: bool | None = None,
) -> str:
    """As ``docker_run_command``, for Podman (CDI device name for NVIDIA GPUs)."""
    return _run_command(
        "podman",
        "--device nvidia.com/gpu=all",
        pipeline_url=pipeline_url,
        engine_url=engine_url,
        engine_config=engine_config,
        edge_bundle=edge_bundle,
        gpu=gpu,
    )


def _helm_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "{" + ",".join(_helm_scalar(v) for v in value) + "}"
    return str(value).replace(",", "\\,")  # --set splits on unescaped commas


def flatten_helm_values(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``{"a": {"b": 1}, "c": True}`` -> ``[("a.b", "1"), ("c", "true")]``, in the dict's order,
    dots inside a key escaped as ``--set`` wants them."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        path = prefix + str(key).replace(".", "\\.")
        if isinstance(value, Mapping):
            out += flatten_helm_values(value, path + ".")
        else:
            out.append((path, _helm_scalar(value)))
    return out


_CREDENTIAL_KEYS = frozenset({"ociRegistry.username", "ociRegistry.password"})


def helm_install_command(
    *,
    chart_url: str,
    chart_version: str,
    helm_values: Mapping[str, Any] | None = None,
    edge_bundle: str | None = None,
    upgrade: bool = False,
) -> str:
    """``helm install --atomic`` of a publish's chart, or with ``upgrade=True`` the in-place
    ``helm upgrade`` Wallaroo shows per edge. The chart URL may carry ``oci://`` or not."""
    chart = chart_url.removeprefix("oci://")
    action = "upgrade" if upgrade else "install --atomic"
    lines = [
        f"helm {action} $HELM_INSTALL_NAME",
        f"oci://{shlex.quote(chart)}",
        "--namespace $HELM_INSTALL_NAMESPACE",
        f"--version {shlex.quote(chart_version)}",
        "--set ociRegistry.username=$OCI_USERNAME",
        "--set ociRegistry.password=$OCI_PASSWORD",
    ]
    for key, value in flatten_helm_values(helm_values or {}):
        if key in _CREDENTIAL_KEYS or (edge_bundle and key == "edgeBundle"):
            continue
        lines.append(f"--set {shlex.quote(f'{key}={value}')}")
    if edge_bundle:
        lines.append(f"--set edgeBundle={shlex.quote(edge_bundle)}")
    return LINE_BREAK.join(lines)
