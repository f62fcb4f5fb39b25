"""The pipeline log is readable by anyone: the README's subscriber, taken from README.md as
it stands, runs with ``python -I`` in a virtualenv that holds nats-py alone (at the pin of
deploy/requirements-dev.lock, installed as setup.sh installs: pip with hashes), against a
real stack with pages appended by two edges through the collector, and counts every row
Ops holds."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgepub import Client
from support import log_pages
from support.log_pages import join, owner
from support.servers import NatsServer
from support.services import OpsServices, clean_environ

pytestmark = [pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
# The README's block follows the sentence that names this test.
README_BLOCK = re.compile(
    r"`tests/integration/test_log_subscriber\.py` runs this very block.*?\n"
    r"(?P<indent> *)```python\n(?P<code>.*?)\n(?P=indent)```",
    re.S,
)
PIN = re.compile(r"^nats-py==\S+(?: *\\\n +--hash=\S+)+", re.M)


def readme_subscriber() -> str:
    found = README_BLOCK.search((ROOT / "README.md").read_text())
    assert found, "README.md: no python block after the sentence naming this test"
    return textwrap.dedent(found["code"]) + "\n"


@pytest.fixture(scope="session")
def nats_py_alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv's python with nats-py and nothing else (no edgepub, no site packages)."""
    venv = tmp_path_factory.mktemp("nats-py-alone")
    pin = PIN.search((ROOT / "deploy" / "requirements-dev.lock").read_text())
    assert pin, "deploy/requirements-dev.lock pins no nats-py"
    (venv / "requirements.txt").write_text(pin[0] + "\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    requirements = ["--require-hashes", "-r", str(venv / "requirements.txt")]
    subprocess.run([*pip, *requirements], check=True, timeout=120)
    alone = subprocess.run(
        [str(python), "-I", "-c", "import importlib.util as u; print(u.find_spec('edgepub'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert alone.stdout.strip() == "None"
    return python


@pytest.fixture
def publish_id(client: Client, model_file: Path) -> int:
    model = client.upload_model("rf", model_file)
    return client.build_pipeline("logs").add_model_step(model).publish(progress=False).id


def test_the_readme_subscriber_counts_every_row_at_ops(
    nats_server: NatsServer,
    ops: OpsServices,
    publish_id: int,
    nats_py_alone: Path,
    tmp_path: Path,
) -> None:
    code = readme_subscriber()
    assert "edgepub" not in code.replace("edgepub.logs.>", "")
    assert len([line for line in code.splitlines() if line.strip()]) <= 13

    async def ship() -> log_pages.OpsLog:
        a = await join(nats_server, publish_id, "shop-a")
        b = await join(nats_server, publish_id, "shop-b")
        nc = await owner(nats_server)
        try:
            await log_pages.ship(a, "shop-a", 1, 300, size=100)
            await log_pages.ship(b, "shop-b", 1, 120, size=50)
            got = await log_pages.wait_rows(nc, 420)
            got.assert_exactly_once({"shop-a": 300, "shop-b": 120})
            return got
        finally:
            for c in (a, b, nc):
                await c.close()

    at_ops = asyncio.run(ship())
    script = tmp_path / "log_subscriber.py"
    script.write_text(code)
    s = nats_server.settings()
    env = clean_environ() | {
        "NATS_URL": s.url,
        "NATS_USER": s.user or "",
        "NATS_PASSWORD": s.password or "",
    }
    out = subprocess.run(
        [str(nats_py_alone), "-I", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{at_ops.total()} rows\n" == "420 rows\n"
