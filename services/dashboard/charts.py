"""Charts as SVG text, drawn on the server (no JavaScript library, nothing fetched): one
line per series over a time axis. Pure: data in, markup out, every label escaped."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
MAX_SERIES = 8  # the rest are summed as "other"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def line_chart(
    series: Mapping[str, Sequence[tuple[datetime, float]]],
    *,
    start: datetime,
    end: datetime,
    title: str,
    unit: str,
    width: int = 720,
    height: int = 240,
    combine: str = "sum",
) -> str:
    """``series`` name -> (time, value) points. Past MAX_SERIES the smallest are folded
    into ``other`` (summed, or their max with ``combine="max"``)."""
    ranked = sorted(series.items(), key=lambda kv: -sum(v for _, v in kv[1]))
    shown = dict(ranked[: MAX_SERIES - 1] if len(ranked) > MAX_SERIES else ranked)
    if len(ranked) > MAX_SERIES:
        other: dict[datetime, float] = {}
        for _, points in ranked[MAX_SERIES - 1 :]:
            for t, v in points:
                other[t] = other.get(t, 0.0) + v if combine == "sum" else max(other.get(t, 0.0), v)
        shown["other"] = sorted(other.items())
    left, right, top, bottom = 56, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    t0, t1 = start.timestamp(), max(end.timestamp(), start.timestamp() + 1)
    ymax = _nice_max(max((v for pts in shown.values() for _, v in pts), default=0.0))

    def x(t: datetime) -> float:
        return left + (t.timestamp() - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / ymax * plot_h

    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{esc(title)}</text>',
    ]
    for i in range(5):  # horizontal grid and y labels
        v = ymax * i / 4
        yy = y(v)
        out.append(
            f'<line x1="{left}" y1="{yy:.1f}" x2="{width - right}" y2="{yy:.1f}" stroke="#e5e7eb"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">'
            f"{esc(_label(v))}</text>"
        )
    for i in range(5):  # time labels
        t = datetime.fromtimestamp(t0 + (t1 - t0) * i / 4, UTC)
        xx = left + plot_w * i / 4
        fmt = "%H:%M" if (t1 - t0) <= 86400 else "%m-%d %H:%M"
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"  # none cut at an edge
        out.append(
            f'<text x="{xx:.1f}" y="{height - bottom + 16}" font-size="10" '
            f'text-anchor="{anchor}">{t.strftime(fmt)}</text>'
        )
    out.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="10" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})" text-anchor="middle">{esc(unit)}</text>'
    )
    if not shown:
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="12" '
            'text-anchor="middle" fill="#6b7280">no rows in this range</text>'
        )
    for n, (name, points) in enumerate(shown.items()):
        color = PALETTE[n % len(PALETTE)]
        pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in sorted(points))
        if len(points) == 1:
            ((t, v),) = points
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
        else:
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}">'
                f"<title>{esc(name)}</title></polyline>"
            )
        lx, ly = left + n * (plot_w / MAX_SERIES), height - 6
        out.append(f'<rect x="{lx:.1f}" y="{ly - 7}" width="10" height="3" fill="{color}"/>')
        out.append(f'<text x="{lx + 13:.1f}" y="{ly - 3}" font-size="10">{esc(name[:14])}</text>')
    out.append("</svg>")
    return "\n".join(out)
