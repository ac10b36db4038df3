"""Spend charts as plain text: SVG for pages, block characters for terminals.

One implementation shared by the local report (``halton-meter report --html``,
``halton-meter dashboard``) and the cloud dashboard (hm_cloud). Pure functions:
no I/O, no clock, no imports from hm_agent, hm_cli or hm_cloud, so both sides
may use it without importing each other. Every outside string is escaped here.

    chart = stacked_bars(
        ["2026-11-23", "2026-11-24"],
        [Series("gpt-4o", [0.42, 1.10]), Series("claude-sonnet-4", [0.0, 0.30])],
        title="Cost per day",
    )                          # '<figure class="hm-chart">…<svg …>…</svg>…</figure>'
    sparkline([0, 1, 4, 2])    # ' ▂█▄'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

__all__ = [
    "CSS",
    "OTHER_COLOUR",
    "PALETTE",
    "Series",
    "dollar_ticks",
    "format_usd",
    "hbar",
    "sparkline",
    "stacked_bars",
    "top_series",
]

Number = float | int | Decimal

# Colour-blind-safe (Okabe-Ito order, then two more); "other" is grey.
PALETTE = ("#2f5bd3", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#7a5c00", "#000000")
OTHER_COLOUR = "#9aa3b2"

CSS = """\
.hm-chart { margin: 0; background: #fff; border: 1px solid #d9dde5; border-radius: 8px; padding: 8px; }
.hm-chart svg { display: block; width: 100%; height: auto; }
.hm-chart .grid { stroke: #e6e9ef; } .hm-chart .axis { stroke: #9aa3b2; }
.hm-chart .budget line { stroke: #c0392b; stroke-width: 1.5; stroke-dasharray: 6 4; }
.hm-chart .budget text { fill: #c0392b; }
.hm-chart text { font: 15px system-ui, sans-serif; fill: #5b6475; }
.hm-chart figcaption { font-weight: 600; margin: 0 0 4px; }
.hm-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; list-style: none; margin: 6px 0 0; padding: 0;
  font-size: 0.85rem; }
.hm-legend li { display: flex; align-items: center; gap: 6px; overflow-wrap: anywhere; }
.hm-legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; flex: none; }
.hm-chart .empty { fill: #5b6475; font-size: 18px; }
"""


@dataclass(frozen=True)
class Series:
    """One stacked layer: a name (model, machine…) and one value per category (day)."""

    name: str
    values: Sequence[Number]


def format_usd(value: Number) -> str:
    """Dollars for people: never a known tiny cost shown as $0."""
    amount = Decimal(str(value))
    if amount == 0:
        return "$0"
    if abs(amount) < Decimal("0.0001"):
        return "<$0.0001"
    if abs(amount) < Decimal("0.01"):
        return f"${amount:.4f}"
    if abs(amount) < 1000:
        return f"${amount:,.2f}"
    return f"${amount:,.0f}"


def dollar_ticks(peak: Number, count: int = 4) -> list[Decimal]:
    """Round y-axis ticks from 0 to at least ``peak`` (steps of 1, 2, 2.5 or 5 × 10^k)."""
    top = Decimal(str(peak))
    if top <= 0:
        return [Decimal(0), Decimal(1)]
    raw = top / max(count, 1)
    exponent = math.floor(math.log10(float(raw)))
    base = Decimal(10) ** exponent
    step = next(m * base for m in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10))
                if m * base >= raw)
    n = int((top / step).to_integral_value(rounding="ROUND_CEILING"))
    return [step * i for i in range(max(n, 1) + 1)]


def _tick_label(value: Decimal) -> str:
    if value == 0:
        return "$0"
    if value >= 1000:
        return f"${value / 1000:g}k"
    return f"${value.normalize():f}" if value >= 1 else f"${value.normalize():f}".replace("$0.", "$.")


def top_series(per_key: Mapping[str, Sequence[Number]], limit: int = 6, other: str = "other") -> list[Series]:
    """The ``limit`` largest series by total, the rest summed into one ``other`` series."""
    ranked = sorted(per_key.items(), key=lambda kv: (-sum(Decimal(str(v)) for v in kv[1]), kv[0]))
    if len(ranked) <= limit + 1:
        return [Series(k, list(v)) for k, v in ranked]
    kept, rest = ranked[:limit], ranked[limit:]
    width = len(rest[0][1])
    summed = [sum((Decimal(str(vals[i])) for _, vals in rest), Decimal(0)) for i in range(width)]
    return [*(Series(k, list(v)) for k, v in kept), Series(f"{other} ({len(rest)})", summed)]


def stacked_bars(
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 640,
    height: int = 220,
    empty_text: str = "No spend in this range.",
    id_prefix: str = "hm",
    line: tuple[Number, str] | None = None,
    value_format: Callable[[Decimal], str] = format_usd,
    tick_format: Callable[[Decimal], str] | None = None,
) -> str:
    """A stacked bar chart (one bar per category, one layer per series) as a <figure>.

    ``line`` = (value, label) draws a dashed horizontal line (a budget per category).

    Dollar ticks on the y axis, the first and last category under the x axis, an
    SVG <title> tooltip on every segment and on every bar (its total), a legend
    below as an HTML list (it wraps at phone width), and an empty state.
    For other quantities (tokens, calls) pass ``value_format`` (tooltips and
    legend) and ``tick_format`` (axis; default: ``value_format``, or dollar
    ticks when that is :func:`format_usd`).
    """
    ticker = tick_format or (_tick_label if value_format is format_usd else value_format)
    left, right, top, bottom = 58, 8, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum((Decimal(str(s.values[i])) for s in series), Decimal(0)) for i in range(len(categories))]
    peak = max(totals, default=Decimal(0))
    line_value = Decimal(str(line[0])) if line is not None else None
    ticks = dollar_ticks(max(peak, line_value or Decimal(0)))
    scale_top = ticks[-1]
    label = escape(title)
    out = [
        f'<figure class="hm-chart" id="{escape(id_prefix)}-chart">',
        f"<figcaption>{label}</figcaption>",
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{label}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{label}</title>',
    ]
    for tick in ticks:
        y = top + plot_h - float(tick / scale_top) * plot_h
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(ticker(tick))}</text>')
    base_y = top + plot_h
    out.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base_y}" y2="{base_y}"/>')
    if peak <= 0:
        out.append(f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
                   f'text-anchor="middle">{escape(empty_text)}</text>')
    slot = plot_w / max(len(categories), 1)
    bar_w = max(slot * 0.78, 1.0)
    for i, category in enumerate(categories):
        x = left + i * slot + (slot - bar_w) / 2
        out.append(f'<g class="bar"><title>{escape(category)}: {escape(value_format(totals[i]))}</title>')
        y = base_y
        for n, s in enumerate(series):
            value = Decimal(str(s.values[i]))
            if value <= 0:
                continue
            h = float(value / scale_top) * plot_h
            y -= h
            colour = _colour(n, s.name, len(series))
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.5):.1f}" fill="{colour}">'
                f"<title>{escape(category)} · {escape(s.name)}: {escape(value_format(value))}</title></rect>"
            )
        out.append("</g>")
    if line is not None and line_value is not None and line_value > 0:
        y = top + plot_h - float(line_value / scale_top) * plot_h
        out.append(f'<g class="budget"><title>{escape(line[1])}</title>'
                   f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text x="{width - right - 4}" y="{y - 4:.1f}" text-anchor="end">{escape(line[1])}</text></g>')
    if categories:
        out.append(f'<text x="{left}" y="{height - 6}">{escape(categories[0])}</text>')
        if len(categories) > 1:
            out.append(f'<text x="{width - right}" y="{height - 6}" text-anchor="end">{escape(categories[-1])}</text>')
    out.append("</svg>")
    if peak > 0 and series:
        out.append('<ul class="hm-legend">')
        for n, s in enumerate(series):
            total = sum((Decimal(str(v)) for v in s.values), Decimal(0))
            out.append(f'<li><i style="background:{_colour(n, s.name, len(series))}"></i>'
                       f"{escape(s.name)} <span>{escape(value_format(total))}</span></li>")
        out.append("</ul>")
    out.append("</figure>")
    return "".join(out)


def _colour(n: int, name: str, count: int) -> str:
    if name.startswith("other (") and n == count - 1:
        return OTHER_COLOUR
    return PALETTE[n % len(PALETTE)]


_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[Number], cells: int | None = None) -> str:
    """One block character per value (or per bucket of values when ``cells`` is smaller);
    a blank for nothing, the lowest block for a small but real amount."""
    vals = [Decimal(str(v)) for v in values]
    if cells is not None and 0 < cells < len(vals):
        size = len(vals) / cells
        vals = [sum(vals[int(i * size):int((i + 1) * size)], Decimal(0)) for i in range(cells)]
    peak = max(vals, default=Decimal(0))
    if peak <= 0:
        return " " * len(vals)
    out = []
    for v in vals:
        if v <= 0:
            out.append(" ")
        else:
            out.append(_BLOCKS[min(len(_BLOCKS) - 1, int(v / peak * (len(_BLOCKS) - 1) + Decimal("0.5")))])
    return "".join(out)


_EIGHTHS = " ▏▎▍▌▋▊▉█"


def hbar(value: Number, peak: Number, width: int) -> str:
    """A horizontal bar of ``width`` cells at most, in eighths of a cell."""
    v, p = Decimal(str(value)), Decimal(str(peak))
    if p <= 0 or v <= 0:
        return ""
    eighths = max(1, int(v / p * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")
