"""What a publish puts in the registry, decided from the PublishRequested alone (pure).

- the pipeline artifact: config = JSON ``PipelineDefinition``, one layer per distinct model
  file (two steps running the same file share one layer);
- the Helm chart input;
- the names: repositories, tags, URLs, the chart version.

Layer titles are the models' file names. Two different files with the same name would make
two layers with one title, which an edge could not tell apart; the later one is renamed
``<stem>-<first 12 hex of its sha256><suffix>`` and its step says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from edgepub.shared import artifact
from edgepub.shared.errors import EmptyPipelineError
from edgepub.shared.schemas import (
    ArtifactStep,
    ModelVersion,
    PipelineDefinition,
    PublishRequested,
    encode_json,
)
from edgepub.shared.settings import RegistrySettings

from .chart import ChartInput

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ModelLayer(msgspec.Struct, frozen=True, kw_only=True):
    model: ModelVersion  # the first step that uses this file
    title: str
    media_type: str

    @property
    def digest(self) -> str:
        return f"sha256:{self.model.sha256}"


class PublishPlan(msgspec.Struct, frozen=True, kw_only=True):
    publish_id: int
    pipeline: str
    version: str  # pipeline version name (uuid): the artifact's tag
    pipeline_repository: str
    chart_repository: str
    chart_version: str
    pipeline_url: str
    chart_url: str
    definition: PipelineDefinition
    layers: tuple[ModelLayer, ...]
    chart: ChartInput

    def config_json(self) -> bytes:
        return encode_json(self.definition)


def safe_title(file_name: str) -> str:
    """A bare file name: no directories, nothing a shell or a path could misread."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).lstrip(".")
    return base or "model"


def _unique_title(wanted: str, sha256: str, taken: set[str]) -> str:
    if wanted not in taken:
        return wanted
    stem, dot, suffix = wanted.rpartition(".")
    if not dot:
        stem, suffix = wanted, ""
    for n in (12, len(sha256)):
        title = f"{stem}-{sha256[:n]}{dot}{suffix}"
        if title not in taken:
            return title
    raise ValueError(f"two layers of one artifact would both be titled {title!r}")


def model_layers(steps: Sequence[ModelVersion]) -> tuple[ModelLayer, ...]:
    """One layer per distinct sha256, in step order, with distinct titles."""
    by_sha: dict[str, ModelLayer] = {}
    taken: set[str] = set()
    for step in steps:
        if step.sha256 in by_sha:
            continue
        title = _unique_title(safe_title(step.file_name), step.sha256, taken)
        taken.add(title)
        by_sha[step.sha256] = ModelLayer(
            model=step, title=title, media_type=artifact.model_media_type(step.runtime)
        )
    return tuple(by_sha.values())


def definition(req: PublishRequested, layers: Sequence[ModelLayer]) -> PipelineDefinition:
    titles = {layer.model.sha256: layer.title for layer in layers}
    pv = req.pipeline_version
    return PipelineDefinition(
        pipeline_name=pv.pipeline_name,
        pipeline_version=pv.name,
        pipeline_version_id=pv.id,
        steps=tuple(
            ArtifactStep(
                model_name=m.name,
                model_version=m.version,
                sha256=m.sha256,
                size=m.size,
                file_name=titles[m.sha256],
                runtime=m.runtime,
                inputs=m.inputs,
                outputs=m.outputs,
            )
            for m in pv.steps
        ),
        engine_config=req.engine_config.as_dict(),
    )


def plan(req: PublishRequested, settings: RegistrySettings) -> PublishPlan:
    """Everything to push for ``req``; raises InvalidNameError / EmptyPipelineError."""
    pv = req.pipeline_version
    pipeline = pv.pipeline_name
    if not pv.steps:
        raise EmptyPipelineError(
            f"pipeline '{pipeline}' version {pv.name} has no steps; add a model step "
            "(pipeline.add_model_step(model)) before publishing"
        )
    registry, repository = settings.registry, settings.repository
    layers = model_layers(pv.steps)
    pipeline_url = artifact.pipeline_url(registry, repository, pipeline, pv.name)
    chart_version = artifact.chart_version(pv.name)
    return PublishPlan(
        publish_id=req.publish_id,
        pipeline=pipeline,
        version=pv.name,
        pipeline_repository=artifact.pipeline_repository(repository, pipeline),
        chart_repository=artifact.chart_repository(repository, pipeline),
        chart_version=chart_version,
        pipeline_url=pipeline_url,
        chart_url=artifact.chart_url(registry, repository, pipeline),
        definition=definition(req, layers),
        layers=layers,
        chart=ChartInput(
            pipeline=pipeline,
            version=chart_version,
            app_version=pv.name,
            registry=registry,
            pipeline_url=pipeline_url,
            image=settings.engine_image,
            engine_config=req.engine_config,
            models_size=sum(layer.model.size for layer in layers),
        ),
    )
