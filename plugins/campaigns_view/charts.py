"""Server-side SVG charts for the Campaigns view: no JavaScript, no chart library, nothing fetched from a CDN.

Air-gapped Airflow servers render them as well as any other; the browser only draws markup. Each function returns
one <svg> element (as markupsafe.Markup) with a <title>, an aria-label, a `data-chart` name the browser test looks
for, and every number it draws also written as text, so a chart reads without hovering or a table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

from markupsafe import Markup

WIDTH = 720
PALETTE = {
    "recipients": "#64748b", "sent": "#2563eb", "delivered": "#0891b2", "opened": "#16a34a",
    "opened_human": "#15803d", "clicked": "#d97706", "clicked_human": "#b45309",
    "pending": "#cbd5e1", "sending": "#93c5fd", "failed": "#dc2626", "skipped": "#a855f7", "cancelled": "#78716c",
    "unknown": "#f59e0b", "opens": "#16a34a", "clicks": "#d97706", "threshold": "#dc2626", "bar": "#2563eb",
}
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _svg(name: str, title: str, height: float, body: list[str]) -> Markup:
    # every caller-supplied string in `body` and here went through html.escape
    return Markup(  # noqa: S704
        f'<svg class="chart" data-chart="{escape(name)}" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" width="100%" preserveAspectRatio="xMinYMin meet" '
        f'xmlns="http://www.w3.org/2000/svg" {FONT}><title>{escape(title)}</title>{"".join(body)}</svg>'
    )


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = "#1e293b", bold: bool = False) -> str:
    weight = ' font-weight="600"' if bold else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}"{weight}>'
            f"{escape(text)}</text>")


def number(n: int | float) -> str:
    return f"{n:,}"


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def percent(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def funnel(steps: Sequence[tuple[str, str, int]], *, base: int) -> Markup:
    """Horizontal bars, one per step (label, colour key, count), scaled to `base` (the recipients)."""
    label_w, bar_w, row_h = 190, 380, 30
    body = []
    for i, (label, colour, value) in enumerate(steps):
        y = 10 + i * row_h
        share = value / base if base else 0.0
        w = max(bar_w * min(share, 1.0), 1.0 if value else 0.0)
        body += [
            _text(label_w - 8, y + 16, label, anchor="end"),
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="{row_h - 8}" fill="#f1f5f9"/>',
            f'<rect data-step="{escape(label)}" data-value="{value}" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
            f'height="{row_h - 8}" fill="{PALETTE[colour]}"/>',
            _text(label_w + bar_w + 8, y + 16, f"{number(value)}  ({percent(share if base else None, 1)})",
                  bold=True),
        ]
    return _svg("funnel", "Funnel: recipients to clicks", 20 + len(steps) * row_h, body)


def rate_gauges(rates: Sequence[dict[str, Any]]) -> Markup:
    """One bar per rate, each on its own scale so a 0.1% threshold is as visible as a 5% one.

    A rate dict: label, value (None: nothing sent yet), numerator, denominator, threshold (None: SES has none),
    digits. The scale reaches twice the threshold (or past the value), and the threshold is a dashed red line.
    """
    label_w, bar_w, row_h = 190, 380, 46
    body = []
    for i, rate in enumerate(rates):
        y = 8 + i * row_h
        value, threshold = rate["value"], rate.get("threshold")
        top = max(2 * threshold if threshold else 0.01, (value or 0) * 1.25, 1e-9)
        w = bar_w * min((value or 0) / top, 1.0)
        over = threshold is not None and value is not None and value >= threshold
        colour = PALETTE["threshold"] if over else PALETTE["bar"]
        detail = (f"{percent(value, rate.get('digits', 2))}  "
                  f"({number(rate['numerator'])} / {number(rate['denominator'])})")
        body += [
            _text(label_w - 8, y + 18, rate["label"], anchor="end"),
            f'<rect x="{label_w}" y="{y + 4}" width="{bar_w}" height="20" fill="#f1f5f9"/>',
            f'<rect data-rate="{escape(rate["name"])}" data-value="{"" if value is None else value}" '
            f'x="{label_w}" y="{y + 4}" width="{w:.1f}" height="20" fill="{colour}"/>',
            _text(label_w + bar_w + 8, y + 18, detail, bold=True, fill=colour),
        ]
        if threshold:
            tx = label_w + bar_w * threshold / top
            body += [
                f'<line data-threshold="{escape(rate["name"])}" x1="{tx:.1f}" x2="{tx:.1f}" y1="{y}" '
                f'y2="{y + 28}" stroke="{PALETTE["threshold"]}" stroke-width="2" stroke-dasharray="4 3"/>',
                _text(tx, y + 40, f"SES review at {percent(threshold, rate.get('digits', 2))}", anchor="middle",
                      fill=PALETTE["threshold"]),
            ]
    return _svg("rates", "Bounce, complaint and unsubscribe rates against SES review thresholds",
                16 + len(rates) * row_h, body)


def _nice_top(value: float) -> int:
    """A y-axis top of 4 whole steps of 1, 2 or 5 x 10^k: counts get whole-number grid labels."""
    quarter = max(value / 4, 1)
    magnitude = 10 ** math.floor(math.log10(quarter))
    step = next(m * magnitude for m in (1, 2, 5, 10) if quarter <= m * magnitude)
    return int(4 * step)


def time_series(name: str, title: str, buckets: Sequence[dict[str, Any]], lines: Sequence[tuple[str, str]],
                *, label_format: str) -> Markup:
    """Opens and clicks per bucket as lines with dots, a y grid and a time axis; `lines` = (metric, label)."""
    left, right, top_pad, plot_h = 56, 16, 28, 180
    plot_w = WIDTH - left - right
    n = len(buckets)
    top = _nice_top(max((b[m] for b in buckets for m, _ in lines), default=0))
    body = []
    for i in range(5):  # horizontal grid with y labels
        y = top_pad + plot_h - plot_h * i / 4
        body += [f'<line x1="{left}" x2="{WIDTH - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>',
                 _text(left - 6, y + 4, number(top * i // 4), anchor="end",
                       fill="#64748b")]

    def x_of(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0)

    every = max(1, math.ceil(n / 8))
    for i, bucket in enumerate(buckets):
        if i % every == 0:
            start: datetime = bucket["bucket_start"]
            body.append(_text(x_of(i), top_pad + plot_h + 16, start.strftime(label_format), anchor="middle",
                              fill="#64748b"))
    legend_x = left
    for metric, label in lines:
        colour = PALETTE[metric]
        total = sum(b[metric] for b in buckets)
        points = " ".join(f"{x_of(i):.1f},{top_pad + plot_h - plot_h * b[metric] / top:.1f}"
                          for i, b in enumerate(buckets))
        body.append(f'<polyline data-series="{escape(metric)}" data-value="{total}" points="{points}" fill="none" '
                    f'stroke="{colour}" stroke-width="2"/>')
        if n <= 60:
            body += [f'<circle cx="{x_of(i):.1f}" cy="{top_pad + plot_h - plot_h * b[metric] / top:.1f}" r="2.5" '
                     f'fill="{colour}"><title>{escape(label)} {number(b[metric])}</title></circle>'
                     for i, b in enumerate(buckets)]
        body += [f'<rect x="{legend_x}" y="6" width="12" height="12" fill="{colour}"/>',
                 _text(legend_x + 16, 16, f"{label}: {number(total)}")]
        legend_x += 180
    return _svg(name, title, top_pad + plot_h + 26, body)


def bar_list(name: str, title: str, items: Sequence[tuple[str, int, str]]) -> Markup:
    """Horizontal bars for a ranking, e.g. clicks per link: (label, value, detail text)."""
    label_w, bar_w, row_h = 300, 260, 26
    top = max((value for _, value, _ in items), default=0) or 1
    body = []
    for i, (label, value, detail) in enumerate(items):
        y = 6 + i * row_h
        short = label if len(label) <= 46 else label[:45] + "…"
        body += [
            f'<g><title>{escape(label)}</title>{_text(label_w - 8, y + 15, short, anchor="end")}</g>',
            f'<rect data-item="{escape(label)}" data-value="{value}" x="{label_w}" y="{y + 2}" '
            f'width="{max(bar_w * value / top, 1 if value else 0):.1f}" height="{row_h - 8}" '
            f'fill="{PALETTE["clicks"]}"/>',
            _text(label_w + bar_w + 8, y + 15, detail, bold=True),
        ]
    return _svg(name, title, 12 + max(len(items), 1) * row_h, body)


def stacked_bar(name: str, title: str, parts: Sequence[tuple[str, int]]) -> Markup:
    """One bar split into parts (ledger states), with a legend that carries every count."""
    left, bar_w = 10, WIDTH - 20
    total = sum(value for _, value in parts)
    body, x = [], float(left)
    for part, value in parts:
        w = bar_w * value / total if total else 0
        if w:
            body.append(f'<rect data-part="{escape(part)}" data-value="{value}" x="{x:.1f}" y="8" width="{w:.1f}" '
                        f'height="28" fill="{PALETTE[part]}"><title>{escape(part)} {number(value)}</title></rect>')
        x += w
    if not total:
        body.append(f'<rect x="{left}" y="8" width="{bar_w}" height="28" fill="#f1f5f9"/>')
    for i, (part, value) in enumerate(parts):
        lx, ly = left + (i % 4) * 175, 56 + (i // 4) * 20
        body += [f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{PALETTE[part]}"/>',
                 _text(lx + 16, ly, f"{part}: {number(value)}")]
    return _svg(name, title, 60 + math.ceil(len(parts) / 4) * 20, body)
