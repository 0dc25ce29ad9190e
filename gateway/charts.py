"""Line charts as inline SVG, drawn on the server from the pipeline's stats buckets.

Hand-written rather than a charting library: the console has no front-end build and loads
nothing from the internet, and a polyline per series with two axis labels is all an
operator reads at a glance. Each chart carries its numbers in a ``<title>`` per point, so
hovering shows the value, and in ``data-`` attributes, so tests read what was drawn.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from worker.stats import Series, percentile

__all__ = ["Chart", "overview_charts"]

_COLOURS = ("#0a7d3e", "#2271b1", "#b32d2e", "#996800", "#8c5fb0", "#117a8b", "#c05600")
_W, _H, _PAD_L, _PAD_B = 560, 170, 46, 22


@dataclass(frozen=True, slots=True)
class Chart:
    """A titled chart's lines: name -> one value (or None: no data) per bucket."""

    id: str
    title: str
    unit: str
    xs: Sequence[float]
    lines: dict[str, list[float | None]]
    limits: dict[str, float]
    """Dashed horizontal lines (a number's configured rate), by name."""
    x_labels: tuple[str, str] | None = None
    """The x axis' first and last labels; None: the buckets' times (UTC)."""

    def points(self) -> int:
        """How many values the chart draws (tests check a chart has data)."""
        return sum(v is not None and v > 0 for line in self.lines.values() for v in line)

    def svg(self) -> Markup:
        """The chart as an ``<svg>`` element."""
        values = [v for line in self.lines.values() for v in line if v is not None]
        top = max([*values, *self.limits.values(), 1e-9])
        top = _nice(top)
        plot_w, plot_h = _W - _PAD_L - 8, _H - _PAD_B - 8
        n = max(len(self.xs) - 1, 1)
        first, last = self.x_labels or (
            (_clock(self.xs[0]), _clock(self.xs[-1]) + " UTC") if self.xs else ("", "")
        )

        def x(i: int) -> float:
            return _PAD_L + plot_w * i / n

        def y(v: float) -> float:
            return 8 + plot_h * (1 - v / top)

        parts = [
            f'<svg class="chart" id="{self.id}" viewBox="0 0 {_W} {_H}" role="img" '
            f'aria-label="{html.escape(self.title)}" data-points="{self.points()}">',
            f'<line x1="{_PAD_L}" y1="{y(0):.1f}" x2="{_W - 8}" y2="{y(0):.1f}" class="axis"/>',
            f'<text x="{_PAD_L - 4}" y="{y(top) + 4:.1f}" text-anchor="end">{_fmt(top)}</text>',
            f'<text x="{_PAD_L - 4}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>',
            f'<text x="{_PAD_L}" y="{_H - 4}">{html.escape(first)}</text>',
            f'<text x="{_W - 8}" y="{_H - 4}" text-anchor="end">{html.escape(last)}</text>',
        ]
        for k, (name, limit) in enumerate(sorted(self.limits.items())):
            colour = _COLOURS[k % len(_COLOURS)]
            parts.append(
                f'<line x1="{_PAD_L}" y1="{y(limit):.1f}" x2="{_W - 8}" y2="{y(limit):.1f}" '
                f'stroke="{colour}" stroke-dasharray="4 3" opacity=".7">'
                f"<title>{html.escape(name)} limit: {_fmt(limit)} {self.unit}</title></line>"
            )
        for k, (name, line) in enumerate(self.lines.items()):
            colour = _COLOURS[k % len(_COLOURS)]
            segment: list[str] = []
            runs: list[list[str]] = []
            for i, value in enumerate(line):
                if value is None:
                    if segment:
                        runs.append(segment)
                    segment = []
                    continue
                segment.append(f"{x(i):.1f},{y(value):.1f}")
            if segment:
                runs.append(segment)
            for run in runs:
                if len(run) == 1:  # a lone value between gaps: a dot, or it would not show
                    cx, cy = run[0].split(",")
                    parts.append(
                        f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}">'
                        f"<title>{html.escape(name)}</title></circle>"
                    )
                    continue
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                    f'points="{" ".join(run)}"><title>{html.escape(name)}</title></polyline>'
                )
        parts.append("</svg>")
        legend = "".join(
            f'<span class="key"><i style="background:{_COLOURS[k % len(_COLOURS)]}"></i>'
            f"{html.escape(name)}</span>"
            for k, name in enumerate(self.lines)
        )
        # Every text in it went through html.escape; the rest are numbers and fixed markup.
        return Markup(  # noqa: S704
            f'<figure class="chart-box"><figcaption>{html.escape(self.title)} '
            f'<span class="muted">({html.escape(self.unit)})</span></figcaption>'
            f'{"".join(parts)}<div class="legend">{legend}</div></figure>'
        )


def overview_charts(series: Series) -> list[Chart]:
    """The overview's charts of the span: rates, outcomes, dead letters, depth, latency."""
    xs = [b.at for b in series.buckets]
    width = series.width_s
    numbers = series.numbers()
    sends: dict[str, list[float | None]] = {
        n: [b.sent.get(n, 0) / width for b in series.buckets] for n in numbers
    }
    outcomes: dict[str, list[float | None]] = {
        "accepted": [float(sum(b.sent.values())) for b in series.buckets],
        "retried": [float(sum(b.retried.values())) for b in series.buckets],
        "dead-lettered": [float(sum(b.dead.values())) for b in series.buckets],
        "delivered": [float(b.delivered) for b in series.buckets],
        "read": [float(b.read) for b in series.buckets],
        "queued": [float(b.queued) for b in series.buckets],
    }
    dead: dict[str, list[float | None]] = {
        c or "-": [float(b.dead.get(c, 0)) for b in series.buckets] for c in series.codes()
    }
    depth: dict[str, list[float | None]] = {
        "not yet final": [float(b.depth) if b.depth is not None else None for b in series.buckets]
    }
    latency: dict[str, list[float | None]] = {
        name: [percentile(b.latency, q) for b in series.buckets]
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
    }
    return [
        Chart("chart-sends", "Sends per second, by number, against its limit", "msg/s", xs,
              sends, dict(series.limits)),
        Chart("chart-outcomes", f"Outcomes per {width} s", "messages", xs, outcomes, {}),
        Chart("chart-dead", f"Dead letters per {width} s, by error code", "messages", xs,
              dead, {}),
        Chart("chart-depth", "Queue depth", "messages", xs, depth, {}),
        Chart("chart-latency", "Enqueue to accepted by Meta, percentiles", "s", xs, latency, {}),
    ]  # fmt: skip


def _nice(value: float) -> float:
    """A round axis top at or above ``value``: 1, 2, 5 times a power of ten."""
    magnitude = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M", time.gmtime(at))
