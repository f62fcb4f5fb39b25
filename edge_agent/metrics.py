"""Prometheus metrics in the text exposition format, without a client library.

Small on purpose: counters and histograms keyed by label tuples, updated from the event
loop's thread; ``render`` writes the text ``/metrics`` serves.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgepub.shared.edge_messages import Traffic

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# The heartbeat's latency window: upper bounds 20 us * 1.12**i, up to ~3.6 min (144
# buckets; a percentile is a bucket's upper bound, so at most 12 % above the true value).
WINDOW_BOUNDS_S = tuple(0.00002 * 1.12**i for i in range(144))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[object], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.values: dict[tuple[Any, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def get(self, labels: tuple[str, ...] = ()) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {_number(value)}")
        return lines


class Gauge:
    """Values read at scrape time: ``read`` gives one number, or one per label key (a
    ``kind="counter"`` one reads a count kept elsewhere, where an update must be cheap)."""

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float | Mapping[tuple[str, ...], float]],
        labels: Sequence[str] = (),
        kind: str = "gauge",
    ) -> None:
        self.name, self.help, self.read, self.label_names = name, help_text, read, tuple(labels)
        self.kind = kind

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        value = self.read()
        values = value if isinstance(value, Mapping) else {(): value}
        for key, number in sorted(values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {_number(number)}")
        return lines


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        # per label key: [count per bucket (non-cumulative) ..., +Inf count, sum]
        self.cells: dict[tuple[str, ...], list[float]] = {}

    def cell(self, labels: tuple[str, ...]) -> list[float]:
        found = self.cells.get(labels)
        if found is None:
            found = self.cells[labels] = [0] * (len(self.buckets) + 2)
        return found

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        cell = self.cell(labels)
        cell[bisect_left(self.buckets, value)] += 1
        cell[-1] += value

    def count(self, labels: tuple[str, ...] = ()) -> int:
        return int(sum(self.cells.get(labels, [0])[:-1]))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key in sorted(self.cells):
            running = 0
            cell = self.cells[key]
            for bound, count in zip((*self.buckets, float("inf")), cell[:-1], strict=True):
                running += int(count)
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {float(cell[-1])!r}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Window:
    """Inference requests since the last ``take``: counts and a fixed log-spaced latency
    histogram (``WINDOW_BOUNDS_S``), so memory is bounded whatever the traffic and an
    observation is one bisect of a constant tuple and two increments."""

    __slots__ = ("clock", "counts", "errors", "requests", "started")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counts = [0] * (len(WINDOW_BOUNDS_S) + 1)  # the last: beyond the top bound
        self.requests = self.errors = 0
        self.started = clock()

    def observe(self, seconds: float, error: bool) -> None:
        self.counts[bisect_left(WINDOW_BOUNDS_S, seconds)] += 1
        self.requests += 1
        if error:
            self.errors += 1

    def quantile(self, q: float) -> float | None:
        """Seconds at or under which a fraction ``q`` of the window's requests finished (a
        bucket's upper bound; the top bound, ~3.6 min, for the overflow), None if empty."""
        if self.requests == 0:
            return None
        rank = max(1, math.ceil(q * self.requests))
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return WINDOW_BOUNDS_S[min(i, len(WINDOW_BOUNDS_S) - 1)]
        return WINDOW_BOUNDS_S[-1]  # unreachable: the counts sum to requests

    def take(self) -> Traffic:
        """The window so far as a heartbeat carries it; a new window starts."""
        now = self.clock()
        interval = max(now - self.started, 0.0)
        p50, p95 = self.quantile(0.5), self.quantile(0.95)
        traffic = Traffic(
            interval_s=interval,
            requests=self.requests,
            errors=self.errors,
            rate_per_s=self.requests / interval if interval > 0 else 0.0,
            p50_ms=None if p50 is None else p50 * 1000.0,
            p95_ms=None if p95 is None else p95 * 1000.0,
        )
        self.counts = [0] * len(self.counts)
        self.requests = self.errors = 0
        self.started = now
        return traffic


class EdgeMetrics:
    """Everything the agent exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "edgepub_edge_requests_total",
            "HTTP requests served, by protocol and status code.",
            ("protocol", "status"),
        )
        self.latency = Histogram(
            "edgepub_edge_request_duration_seconds",
            "Time from request start to response, by protocol.",
            ("protocol",),
        )
        self.errors = Counter(
            "edgepub_edge_request_errors_total",
            "Requests answered with an error, by protocol and error code.",
            ("protocol", "code"),
        )
        self.records = Counter(
            "edgepub_edge_inference_records_total", "Records inferred (rows in, rows out)."
        )
        self.gauges: list[Gauge] = []
        self.others: list[Counter | Histogram] = []  # added by the parts that update them
        self._latency: dict[str, list[float]] = {}
        self.window = Window()  # inference requests since the last heartbeat

    def observe(self, protocol: str, status: int, seconds: float, infer: bool = False) -> None:
        """One answered request: its count by protocol and status, and its latency; an
        inference request (``infer``) also in the heartbeat's window.

        On every request's path, so it touches the metrics' storage directly.
        """
        if infer:
            window = self.window
            window.counts[bisect_left(WINDOW_BOUNDS_S, seconds)] += 1
            window.requests += 1
            if status >= 400:
                window.errors += 1
        key = (protocol, status)
        values = self.requests.values
        values[key] = values.get(key, 0.0) + 1.0
        cell = self._latency.get(protocol)
        if cell is None:
            cell = self._latency[protocol] = self.latency.cell((protocol,))
        cell[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        cell[-1] += seconds

    def gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float | Mapping[tuple[str, ...], float]],
        labels: Sequence[str] = (),
        kind: str = "gauge",
    ) -> None:
        self.gauges.append(Gauge(name, help_text, read, labels, kind))

    def add(self, metric: Counter | Histogram) -> None:
        self.others.append(metric)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.errors, self.records, self.latency, *self.others):
            lines.extend(metric.render())
        for gauge in self.gauges:
            lines.extend(gauge.render())
        return "\n".join(lines) + "\n"
