"""``PipelinePublish``: a publish as the SDK shows it, with the seed's attribute names."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from edgepub.shared.schemas import PublishRecord

from . import display


class PipelinePublish:
    def __init__(self, record: PublishRecord) -> None:
        self._record = record

    @property
    def record(self) -> PublishRecord:
        return self._record

    # The seed's fields, one property each so editors and mypy see them.
    @property
    def id(self) -> int:
        return self._record.id

    @property
    def pipeline_name(self) -> str:
        return self._record.pipeline_name

    @property
    def pipeline_version_id(self) -> int:
        return self._record.pipeline_version_id

    @property
    def pipeline_version_name(self) -> str:
        return self._record.pipeline_version_name

    @property
    def status(self) -> str:
        return self._record.status

    @property
    def engine_url(self) -> str | None:
        return self._record.engine_url

    @property
    def pipeline_url(self) -> str | None:
        return self._record.pipeline_url

    @property
    def helm(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self._record.helm) if self._record.helm else {}

    @property
    def docker_run_variables(self) -> dict[str, str]:
        return dict(self._record.docker_run_variables)

    @property
    def edge_bundles(self) -> dict[str, str]:
        return {}

    @property
    def engine_config(self) -> dict[str, Any]:
        return self._record.engine_config.as_dict()

    @property
    def user_images(self) -> list[str]:
        return list(self._record.user_images)

    @property
    def created_by(self) -> str:
        return self._record.created_by

    @property
    def created_by_email(self) -> str:
        return self._record.created_by

    @property
    def created_at(self) -> datetime:
        return self._record.created_at

    @property
    def updated_at(self) -> datetime:
        return self._record.updated_at

    @property
    def created_on_version(self) -> str:
        return self._record.created_on_version

    @property
    def replaces(self) -> list[int]:
        return list(self._record.replaces)

    @property
    def error(self) -> str | None:
        return self._record.error

    @property
    def workspace_id(self) -> int:
        return self._record.workspace_id

    @property
    def workspace_name(self) -> str:
        return self._record.workspace_name

    def __repr__(self) -> str:
        return display.publish_text(self._record)

    def _repr_html_(self) -> str:
        return display.publish_html(self._record)


class PublishList(list[PipelinePublish]):
    """A list of publishes that shows itself as a table."""

    def __repr__(self) -> str:
        return display.publishes_text([p.record for p in self])

    def _repr_html_(self) -> str:
        return display.publishes_html([p.record for p in self])
