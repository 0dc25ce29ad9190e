"""A load test's report as one self-contained HTML page, to attach to a campaign review.

Inline CSS and SVG only (the charts are ``gateway.charts``'): it opens from a file, offline,
and shows the run's settings, the send rate over time against the senders' limit, the
latency distribution, the outcomes and the dead letters.
"""

from __future__ import annotations

import html
import json
import time

from gateway.charts import Chart
from producer import keys
from waq.loadtest import LoadReport

__all__ = ["render_html"]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px;
       color: #1d2327; padding: 0 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { text-align: left; padding: .25rem .7rem; border-bottom: 1px solid #e2e4e7; }
th { background: #eef0f1; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1rem; }
.chart-box { border: 1px solid #e2e4e7; margin: 0; padding: .5rem; }
.chart-box figcaption { font-weight: 600; }
svg.chart { width: 100%; height: auto; font-size: 11px; fill: #646970; }
svg.chart .axis { stroke: #c3c7cb; }
.legend .key { margin-right: .8rem; font-size: .85rem; }
.legend i { display: inline-block; width: .8rem; height: .25rem; margin-right: .3rem;
            vertical-align: middle; }
.muted { color: #646970; }
"""


def render_html(report: LoadReport, *, title: str = "waq load test") -> str:
    """The page: settings, figures, charts, outcomes, dead letters; the report's JSON inside."""
    seconds = [float(i) for i in range(len(report.accepted_per_second))]
    rate = Chart(
        "chart-rate", "Accepted by Meta per second, against the senders' limit", "msg/s",
        seconds, {"accepted": [float(n) for n in report.accepted_per_second]},
        {"limit": report.limit_mps} if report.limit_mps else {},
        (f"{seconds[0]:g} s", f"{seconds[-1]:g} s") if seconds else None,
    )  # fmt: skip
    edges = [*(f"≤ {e:g} s" for e in keys.LATENCY_EDGES_S), "slower"]
    latency = Chart(
        "chart-latency", "Latency distribution (messages per bucket)", "messages",
        [float(i) for i in range(len(edges))],
        {name: [float(n) for n in counts] for name, counts in report.latency_histogram_s.items()},
        {}, (edges[0], edges[-1]),
    )  # fmt: skip
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in report.settings.items()
    )
    states = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(report.states.items())
    )
    dead = (
        "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
            for k, v in report.dead_letters_by_code.items()
        )
        or "<tr><td colspan=2>none</td></tr>"
    )
    buckets = "".join(
        f"<tr><td>{html.escape(edge)}</td>"
        + "".join(f"<td>{counts[i]}</td>" for counts in report.latency_histogram_s.values())
        + "</tr>"
        for i, edge in enumerate(edges)
    )
    names = "".join(f"<th>{html.escape(n)}</th>" for n in report.latency_histogram_s)
    figures = html.escape(report.render())
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="muted">Generated {generated} by waq loadtest.</p>
<h2>Settings</h2><table id="settings">{rows}</table>
<h2>Figures</h2><pre id="figures">{figures}</pre>
<div class="charts">{rate.svg()}{latency.svg()}</div>
<p class="muted">The latency chart's x axis is the buckets of the table below. Delivery is when
waq had Meta's status webhook; Meta's own timestamps are whole seconds.</p>
<h2>Latency buckets</h2><table id="latency"><tr><th>bucket</th>{names}</tr>{buckets}</table>
<h2>Outcomes</h2><table id="states"><tr><th>state</th><th>messages</th></tr>{states}</table>
<h2>Dead letters by code</h2><table id="dead"><tr><th>code</th><th>messages</th></tr>{dead}</table>
<script type="application/json" id="report">{html.escape(report.model_dump_json())}</script>
</body></html>
"""
