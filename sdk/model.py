"""The SDK's model version object (what ``Client.upload_model`` returns)."""

from __future__ import annotations

import enum
from typing import Any

from edgepub.shared.schemas import ModelVersion, TensorSpec


class Framework(enum.StrEnum):
    """Model frameworks; edgepub serves ONNX."""

    ONNX = "onnx"


class Model:
    """One uploaded version of a model. Attributes mirror the stored record."""

    def __init__(self, record: ModelVersion) -> None:
        self._record = record
        self._config: dict[str, Any] = {}

    @property
    def record(self) -> ModelVersion:
        return self._record

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def version(self) -> str:
        return self._record.version

    @property
    def sha(self) -> str:
        return self._record.sha256

    @property
    def file_name(self) -> str:
        return self._record.file_name

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._record.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._record.outputs

    def configure(self, **config: Any) -> Model:
        """Accepted for Wallaroo compatibility (e.g. ``tensor_fields``); returns self."""
        self._config.update(config)
        return self

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version!r}, sha={self.sha[:12]}…)"

    def _repr_html_(self) -> str:
        import html

        rows = [
            ("Name", self.name),
            ("Version", self.version),
            ("File Name", self.file_name),
            ("SHA", self.sha),
            ("Inputs", ", ".join(f"{t.name}: {t.dtype}{list(t.shape)}" for t in self.inputs)),
            ("Outputs", ", ".join(f"{t.name}: {t.dtype}{list(t.shape)}" for t in self.outputs)),
            ("Created By", self._record.created_by),
            ("Created At", str(self._record.created_at)),
        ]
        body = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
        )
        return f"<table>{body}</table>"
