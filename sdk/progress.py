"""What a person sees while a publish is pending: the seed's lines, a dot a second."""

from __future__ import annotations

import sys
from typing import TextIO

from edgepub.shared.schemas import PublishRecord


class PublishProgress:
    def __init__(self, timeout: float, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._out = stream or sys.stdout
        self._enabled = enabled
        self._status: str | None = None
        self._timeout = timeout

    def start(self) -> None:
        self._write(f"Waiting for pipeline publish... It may take up to {self._timeout:.0f} sec.\n")

    def update(self, record: PublishRecord) -> None:
        if record.status == self._status:
            return
        self._status = record.status
        if record.status == "PendingPublish":
            self._write("Pipeline publish is pending")
        elif record.status == "Publishing":
            self._write(" Pipeline is publishing")
        elif record.status == "Published":
            self._write(" Published.\n")
        elif record.status == "Error":
            self._write(f" Error: {record.error}\n")

    def tick(self) -> None:
        self._write(".")

    def _write(self, text: str) -> None:
        if self._enabled:
            self._out.write(text)
            self._out.flush()
