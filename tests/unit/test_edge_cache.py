"""The pipeline cache on the persistent volume: whole pulls only, an atomic ``current``,
and a pull that fails halfway leaves the served pipeline as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import structlog

from edgepub.edge_agent.cache import PipelineCache, safe_file_name
from edgepub.edge_agent.puller import NotAPipelineError, pull
from edgepub.shared import artifact
from edgepub.shared.artifact import Reference
from edgepub.shared.errors import DigestMismatchError, RegistryUnavailableError
from edgepub.shared.schemas import ArtifactStep, PipelineDefinition, encode_json

REF = Reference(registry="r.example.com", repository="edgepub/pipelines/p1", tag="v1")
URL = "r.example.com/edgepub/pipelines/p1:v1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """An in-memory registry with one artifact; ``corrupt`` serves other bytes for a blob."""

    def __init__(self, model: bytes, config_media_type: str = artifact.PIPELINE_CONFIG_MEDIA_TYPE):
        self.model = model
        self.corrupt: set[str] = set()
        self.down = False
        definition = PipelineDefinition(
            pipeline_name="p1",
            pipeline_version="v1",
            pipeline_version_id=1,
            steps=(
                ArtifactStep(
                    model_name="m",
                    model_version="1",
                    sha256=sha(model),
                    size=len(model),
                    file_name="m.onnx",
                    runtime="onnx",
                    inputs=(),
                    outputs=(),
                ),
            )
            * 2,  # two steps, one layer
            engine_config={},
        )
        self.config = encode_json(definition)
        self.blobs = {f"sha256:{sha(model)}": model, f"sha256:{sha(self.config)}": self.config}
        self.manifest = {
            "schemaVersion": 2,
            "mediaType": artifact.OCI_MANIFEST,
            "config": {
                "mediaType": config_media_type,
                "digest": f"sha256:{sha(self.config)}",
                "size": len(self.config),
            },
            "layers": [
                {
                    "mediaType": artifact.ONNX_MODEL_MEDIA_TYPE,
                    "digest": f"sha256:{sha(model)}",
                    "size": len(model),
                    "annotations": {artifact.ANNOTATION_TITLE: "m.onnx"},
                }
            ],
        }
        self.downloads = 0

    def manifest_digest(self) -> str:
        return f"sha256:{sha(encode_json(self.manifest))}"

    def manifest_of(self, repository: str, reference: str) -> tuple[dict[str, Any], str]:
        if self.down:
            raise RegistryUnavailableError("registry r.example.com unreachable: refused")
        return self.manifest, self.manifest_digest()

    def blob(self, repository: str, digest: str) -> bytes:
        return self.blobs[digest]

    def blob_to_file(self, repository: str, digest: str, path: Path) -> None:
        self.downloads += 1
        data = b"tampered" if digest in self.corrupt else self.blobs[digest]
        if f"sha256:{sha(data)}" != digest:
            raise DigestMismatchError(f"blob {digest} arrived as sha256:{sha(data)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class Client:
    def __init__(self, fake: FakeRegistry) -> None:
        self.fake = fake
        self.manifest = fake.manifest_of
        self.blob = fake.blob
        self.blob_to_file = fake.blob_to_file


LOG = structlog.get_logger("test")


def test_pull_commits_and_a_second_pull_downloads_nothing(tmp_path: Path) -> None:
    cache = PipelineCache(tmp_path)
    cache.prepare()
    fake = FakeRegistry(b"model-one")
    cached, fetched = pull(Client(fake), REF, URL, cache, LOG)
    assert fetched and fake.downloads == 1  # two steps share one layer
    assert (cached.models_dir / "m.onnx").read_bytes() == b"model-one"
    assert cache.current() == cached
    cache.verify(cached)
    again, fetched = pull(Client(fake), REF, URL, cache, LOG)
    assert not fetched and again.path == cached.path and fake.downloads == 1


def test_a_mismatch_leaves_current_alone(tmp_path: Path) -> None:
    cache = PipelineCache(tmp_path)
    cache.prepare()
    good, _ = pull(Client(FakeRegistry(b"model-one")), REF, URL, cache, LOG)
    bad = FakeRegistry(b"model-two")
    bad.corrupt.add(f"sha256:{sha(b'model-two')}")
    with pytest.raises(DigestMismatchError):
        pull(Client(bad), REF, URL, cache, LOG)
    current = cache.current()
    assert current is not None and current.path == good.path
    assert [p.name for p in cache.store.iterdir()] == [good.path.name]
    assert not list(tmp_path.glob(".staging-*"))


def test_a_model_changed_on_disk_fails_verification(tmp_path: Path) -> None:
    cache = PipelineCache(tmp_path)
    cache.prepare()
    cached, _ = pull(Client(FakeRegistry(b"model-one")), REF, URL, cache, LOG)
    (cached.models_dir / "m.onnx").write_bytes(b"model-0ne")
    with pytest.raises(DigestMismatchError, match=r"m\.onnx"):
        cache.verify(cached)


def test_something_else_than_a_pipeline_is_refused(tmp_path: Path) -> None:
    cache = PipelineCache(tmp_path)
    cache.prepare()
    fake = FakeRegistry(b"x", config_media_type=artifact.HELM_CONFIG_MEDIA_TYPE)
    with pytest.raises(NotAPipelineError, match="not an edgepub pipeline"):
        pull(Client(fake), REF, URL, cache, LOG)
    assert cache.current() is None


def test_old_pulls_are_pruned_and_staging_left_overs_removed(tmp_path: Path) -> None:
    cache = PipelineCache(tmp_path)
    cache.prepare()
    for n in range(4):
        pull(Client(FakeRegistry(f"model-{n}".encode())), REF, URL, cache, LOG)
    assert len(list(cache.store.iterdir())) == 2
    (tmp_path / ".staging-abc").mkdir()
    cache.prepare()
    assert not (tmp_path / ".staging-abc").exists()


@pytest.mark.parametrize("name", ["", "..", "a/b", "../x", "a\\b"])
def test_layer_titles_must_be_plain_names(name: str) -> None:
    with pytest.raises(DigestMismatchError):
        safe_file_name(name)


def test_a_pipeline_pulled_before_is_served_again_without_a_download(tmp_path: Path) -> None:
    # assigned v1, then v2, then back to v1 (a rollback): the store still holds v1
    cache = PipelineCache(tmp_path)
    cache.prepare()
    url2 = URL.replace(":v1", ":v2")
    one, two = FakeRegistry(b"model-one"), FakeRegistry(b"model-two")
    first, _ = pull(Client(one), REF, URL, cache, LOG)
    second, _ = pull(Client(two), REF, url2, cache, LOG)
    assert cache.current() == second
    found = cache.find(URL)
    assert found is not None and found.path.name == first.path.name
    again, fetched = pull(Client(one), REF, URL, cache, LOG)
    assert not fetched and one.downloads == 1
    assert cache.current() == again and again.path.name == first.path.name
    # the one served before the rollback is kept: it is the newest other pull
    assert {p.name for p in cache.store.iterdir()} == {first.path.name, second.path.name}
    assert cache.find("r.example.com/edgepub/pipelines/p1:v3") is None
