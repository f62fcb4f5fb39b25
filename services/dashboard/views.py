"""The pages' data from the source's cache, through the pure view-model (``view.py``):
what ``web.Dashboard`` serves as JSON, CSV and server-sent events."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from . import view
from .settings import DashboardSettings
from .source import FleetSource

CSV_ROWS = 100_000  # a CSV export holds every matching row, not one page


class SourceViews:
    def __init__(
        self, source: FleetSource, settings: DashboardSettings, *, now: Callable[[], datetime]
    ) -> None:
        self._source = source
        self._now = now
        self.thresholds = view.Thresholds(
            offline_after_s=settings.offline_after_s,
            backlog_rows=settings.backlog_rows,
            stuck_after_s=settings.stuck_after_s,
        )

    def _rows(self, now: datetime) -> list[view.EdgeRow]:
        s = self._source
        return view.fleet_rows(s.records.values(), s.seen, now, self.thresholds)

    def fleet(self, query: Mapping[str, str]) -> dict[str, Any]:
        parsed = view.parse_query(query)
        now = self._now()
        rows = self._rows(now)
        shown, matched = view.apply_query(rows, parsed)
        return {
            "now": now,
            "counters": msgspec.to_builtins(view.counters(rows, self.thresholds)),
            "columns": list(view.COLUMNS),
            "query": msgspec.to_builtins(parsed),
            "matched": matched,
            "rows": msgspec.to_builtins(shown),
        }

    def fleet_csv(self, query: Mapping[str, str]) -> str:
        parsed = view.parse_query(query)  # every matching row: its offset and limit unused
        rows = view.sort_rows(
            view.filter_rows(self._rows(self._now()), parsed), parsed.sort, parsed.descending
        )
        return view.to_csv(rows[:CSV_ROWS])

    def publishes(self, query: Mapping[str, str]) -> dict[str, Any]:
        now = self._now()
        rows = view.publish_rows(
            self._source.publishes.values(), self._rows(now), now, self.thresholds
        )
        pipeline = query.get("pipeline")
        if pipeline:
            rows = [r for r in rows if r.pipeline_name == pipeline]
        return {"now": now, "rows": msgspec.to_builtins(rows)}

    def pipelines(self) -> list[str]:
        return sorted({p.pipeline_name for p in self._source.publishes.values()})
