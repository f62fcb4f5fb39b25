"""The blocking half of a publish: both artifacts of a plan into the registry.

Runs in a worker thread of the push's own session (``session.PushSession.call``: a
cancelled push stops at the next request or body chunk); every registry error is already
an edgepub error (``shared/oci.py`` translates them).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from edgepub.shared import artifact
from edgepub.shared.oci import BlobPushed, LayerSource, RegistryClient

from . import chart as chart_mod
from .definition import ModelLayer, PublishPlan

OnBlob = Callable[[BlobPushed], None]


def push_pipeline(
    client: RegistryClient,
    plan: PublishPlan,
    files: Mapping[str, Path],
    on_blob: OnBlob | None = None,
) -> str:
    """The pipeline artifact at ``<repo>/pipelines/<pipeline>:<version>``; its digest.

    ``files`` maps each model's sha256 hex to a local file with its bytes; a file is only
    read if the registry lacks that layer (``handlers`` makes sure it has them all).
    """
    return client.push_artifact(
        plan.pipeline_repository,
        plan.version,
        config=plan.config_json(),
        config_media_type=artifact.PIPELINE_CONFIG_MEDIA_TYPE,
        layers=[layer_source(layer, files[layer.model.sha256]) for layer in plan.layers],
        artifact_type=artifact.PIPELINE_ARTIFACT_TYPE,
        on_blob=on_blob,
    )


def layer_source(layer: ModelLayer, path: Path) -> LayerSource:
    return LayerSource(
        path=str(path),
        media_type=layer.media_type,
        title=layer.title,
        digest=layer.digest,
        size=layer.model.size,
    )


def upload_file(client: RegistryClient, repository: str, layer: ModelLayer, path: Path) -> None:
    with open(path, "rb") as f:
        client.upload_blob(repository, layer.digest, layer.model.size, f)


def push_chart(
    client: RegistryClient,
    plan: PublishPlan,
    work_dir: Path,
    on_blob: OnBlob | None = None,
) -> str:
    """The Helm chart at ``<repo>/charts/<pipeline>:<chart version>``; its digest.

    Laid out as ``helm push`` lays it out (Helm's media types, no artifactType), so
    ``helm pull oci://... --version ...`` finds it.
    """
    chart = chart_mod.build(plan.chart)
    title = f"{chart.name}-{chart.version}.tgz"
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A file only while it is pushed (0600, mkstemp): charts are rebuilt, never reused.
    fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=f".{title}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(chart.tgz())
        return client.push_artifact(
            plan.chart_repository,
            plan.chart_version,
            config=chart.config_json(),
            config_media_type=artifact.HELM_CONFIG_MEDIA_TYPE,
            layers=[LayerSource(path=tmp, media_type=artifact.HELM_CHART_MEDIA_TYPE, title=title)],
            annotations={
                artifact.ANNOTATION_TITLE: chart.name,
                artifact.ANNOTATION_VERSION: chart.version,
                artifact.ANNOTATION_DESCRIPTION: chart.metadata["description"],
            },
            on_blob=on_blob,
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
