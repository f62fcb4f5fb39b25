"""``Client()`` with no arguments finds a running embedded stack (``edgepub up``) and
publishes through the services that stack supervises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from edgepub.samples import house_price_model
from edgepub.shared.errors import ConfigError
from support.stack import EmbeddedStack

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(tmp_path / "home")
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_client_without_arguments_uses_the_embedded_stack(
    stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("EDGEPUB_NATS_URL", "EDGEPUB_NATS_USER", "EDGEPUB_NATS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EDGEPUB_HOME", str(stack.data_dir))
    with Client() as client:
        assert client.user == "admin"
        model = client.upload_model("rf", house_price_model(tmp_path / "rf.onnx", n_estimators=3))
        publish = client.build_pipeline("embedded").add_model_step(model).publish(progress=False)
    assert publish.status == "Published"
    assert publish.created_by == "admin"
    assert publish.pipeline_url is not None
    assert publish.pipeline_url.startswith(stack.info().registry + "/edgepub/pipelines/embedded:")


def test_client_without_a_stack_says_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEPUB_NATS_URL", raising=False)
    monkeypatch.setenv("EDGEPUB_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="edgepub up"):
        Client()
