"""A Docker engine for tests: the one ``docker info`` already reaches (``DOCKER_HOST``, a
docker context, the default socket), else the one ``../shared/tools/docker-up`` starts (as on
CI here). A test skips, saying why, only where neither gives an engine."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER_UP = ROOT.parent / "shared" / "tools" / "docker-up"
DEFAULT_BASE = "python:3.11-slim"  # the Dockerfiles' own default


class NoEngine(Exception):
    """No Docker engine (or no compose) can be had here; the message says why."""


def run(
    env: Mapping[str, str], *argv: str, timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``argv`` (``docker ...``, ``docker-compose ...``) against the engine ``env`` names."""
    return subprocess.run(
        list(argv),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def engine_answers(env: Mapping[str, str]) -> bool:
    if shutil.which("docker", path=env.get("PATH")) is None:
        return False
    try:
        info = run(env, "docker", "info", "--format", "{{.ServerVersion}}", timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0 and bool(info.stdout.strip())


def _exports(text: str) -> dict[str, str]:
    """``export KEY=VALUE`` lines, as docker-up prints them for ``eval``."""
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value
    return out


def find_engine(
    environ: Mapping[str, str] | None = None, docker_up: Path = DOCKER_UP
) -> dict[str, str]:
    """An environment whose ``docker`` reaches an engine: ``environ`` itself when ``docker
    info`` answers, else ``environ`` plus what docker-up exports. Raises NoEngine."""
    env = dict(os.environ if environ is None else environ)
    if engine_answers(env):
        return env
    if not docker_up.exists():
        raise NoEngine(f"no Docker engine answers `docker info`, and {docker_up} is missing")
    try:
        out = run(env, "bash", str(docker_up), timeout=900)
    except subprocess.TimeoutExpired:
        raise NoEngine(f"{docker_up} did not finish within 900 s") from None
    if out.returncode != 0:
        raise NoEngine(f"no Docker engine answers `docker info`; docker-up: {out.stderr[-800:]}")
    env.update(_exports(out.stdout))
    if not engine_answers(env):
        raise NoEngine(f"docker-up exported {_exports(out.stdout)} but `docker info` fails")
    return env


@functools.cache
def _engine() -> tuple[tuple[str, str], ...] | str:
    try:
        return tuple(find_engine().items())
    except NoEngine as exc:
        return str(exc)


def engine_or_skip() -> dict[str, str]:
    """``find_engine()``, once per session; skips the test with the reason if none."""
    found = _engine()
    if isinstance(found, str):
        pytest.skip(found)
    return dict(found)


def base_image(env: Mapping[str, str]) -> str:
    """What the Dockerfiles build FROM: docker-up's local stand-in, or python:3.11-slim."""
    return env.get("EDGEPUB_BASE_IMAGE") or DEFAULT_BASE


def compose_command(env: Mapping[str, str]) -> list[str]:
    """``docker-compose`` (v1, which docker-up installs) or the ``docker compose`` plugin."""
    if shutil.which("docker-compose", path=env.get("PATH")):
        return ["docker-compose"]
    if run(env, "docker", "compose", "version", timeout=30).returncode == 0:
        return ["docker", "compose"]
    raise NoEngine("neither docker-compose nor the `docker compose` plugin is installed")


def build_image(env: Mapping[str, str], dockerfile: str, tag: str) -> None:
    """``docker build`` on the host's network, FROM ``base_image(env)``; layers are reused."""
    build = run(
        env,
        "docker",
        "build",
        "--force-rm",  # a failed step leaves no container behind
        "--network",
        "host",
        "--build-arg",
        f"BASE={base_image(env)}",
        "-f",
        dockerfile,
        "-t",
        tag,
        ".",
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]


def leftovers(env: Mapping[str, str], label: str) -> dict[str, Sequence[str]]:
    """Containers and volumes still carrying ``label`` (``key=value``), by kind."""
    found: dict[str, Sequence[str]] = {}
    for kind, argv in (
        ("containers", ("docker", "ps", "-a", "-q", "--filter", f"label={label}")),
        ("volumes", ("docker", "volume", "ls", "-q", "--filter", f"label={label}")),
    ):
        out = run(env, *argv, timeout=30)
        assert out.returncode == 0, out.stderr
        found[kind] = out.stdout.split()
    return found
