"""A malformed ``EDGE_BUNDLE`` stops the real ``edgepub-edge`` process: exit code 2, one line
on stderr naming what is wrong, and neither the join token nor the bundle in it."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepub.shared.bundle import MAX_BUNDLE_CHARS
from support.servers import HOST
from support.services import clean_environ

TOKEN = "26fc1cb8-2512-4be7-94de-6464b50d638b"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def bundle(**values: str | None) -> str:
    base: dict[str, str | None] = {
        "BUNDLE_VERSION": "1",
        "EDGE_NAME": "shop-12",
        "JOIN_TOKEN": TOKEN,
        "OPSCENTER_HOST": "127.0.0.1:1/edge",
        "PIPELINE_URL": "127.0.0.1:5000/edgepub/pipelines/p:1",
        "WORKSPACE_ID": "7",
    }
    base.update(values)
    return b64("\n".join(f"export {k}={v}" for k, v in base.items() if v is not None))


def edge_command() -> list[str]:
    """The console script the image runs, else the module (an install without scripts)."""
    script = shutil.which("edgepub-edge", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "edgepub.edge_agent"]


def run_agent(edge_bundle: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = clean_environ()
    env.update(
        EDGEPUB_PERSIST_DIR=str(tmp_path),
        EDGEPUB_HOST=HOST,
        EDGEPUB_PORT="1",
        PIPELINE_URL="127.0.0.1:5000/edgepub/pipelines/p:1",
        EDGE_BUNDLE=edge_bundle,
    )
    return subprocess.run(
        edge_command(),
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


MALFORMED = [
    ("not-base64", "%%% not a bundle %%%", ["is not standard base64"]),
    ("not-lines", b64("hello world"), ["line 1 is not 'export KEY=VALUE'"]),
    ("version", bundle(BUNDLE_VERSION="2"), ["BUNDLE_VERSION='2'"]),
    ("name", bundle(EDGE_NAME="Shop_12"), ["EDGE_NAME='Shop_12'", "DNS-safe"]),
    ("token", bundle(JOIN_TOKEN=TOKEN[:-1] + "z"), ["JOIN_TOKEN", "hidden"]),
    ("no-host", bundle(OPSCENTER_HOST=None), ["lacks OPSCENTER_HOST"]),
    ("host", bundle(OPSCENTER_HOST="https://ops"), ["OPSCENTER_HOST='https://ops'", "wss://"]),
    ("workspace", bundle(WORKSPACE_ID=None), ["lacks WORKSPACE_ID"]),
    ("huge", bundle() + "A" * MAX_BUNDLE_CHARS, ["at most 16384"]),
]


@pytest.mark.parametrize("text,words", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_bundle_stops_the_agent_with_one_line(
    text: str, words: list[str], tmp_path: Path
) -> None:
    done = run_agent(text, tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("edgepub-edge: EDGE_BUNDLE=<") and "hidden>" in line, line
    for word in words:
        assert word in line, line
    assert "from publish.add_edge" in line, line
    assert TOKEN not in done.stderr and TOKEN[:8] not in done.stderr
    assert text.strip() not in done.stderr
    assert done.stdout == ""
