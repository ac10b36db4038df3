"""`report --html` and `dashboard`: the local spend as one self-contained HTML file.

The chart comes from hm_charts, the same code that draws the cloud dashboard's.
No server, no network, no JavaScript: inline CSS and inline SVG only, so the
file can be mailed or opened from /tmp. Every outside string (model names,
hosts, project names) is escaped.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

from hm_charts import CSS as CHART_CSS
from hm_charts import format_usd, stacked_bars, top_series

from .report import NONE_LABEL, Group, Spend, aggregate, comparison_line

PAGE_CSS = """\
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dde5; --bg: #f6f7f9; --accent: #2f5bd3; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
  background: var(--bg); }
main { max-width: 960px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.5rem; margin: 8px 0 4px; } h2 { font-size: 1.15rem; margin: 24px 0 8px; }
.muted { color: var(--muted); font-weight: normal; }
.totals { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 8px; margin: 0; }
.totals div { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.totals dt { color: var(--muted); font-size: 0.85rem; }
.totals dd { margin: 0; font-size: 1.25rem; font-weight: 700; overflow-wrap: anywhere; }
.note { color: var(--muted); }
.scroll { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
caption { text-align: left; color: var(--muted); padding: 4px 0; font-size: 0.9rem; }
th, td { padding: 8px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th[scope="row"] { min-width: 8em; overflow-wrap: anywhere; }
td.cost { text-align: right; min-width: 7em; }
thead th { font-size: 0.85rem; color: var(--muted); }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.empty { color: var(--muted); }
@media (max-width: 600px) { body { font-size: 15px; } main { padding: 12px; } th, td { padding: 6px; }
  .wide { display: none; } }
"""

TABLES = (("model", "Model"), ("provider", "Provider"), ("host", "Host"), ("project", "Project"), ("day", "Day"))


def cost_cell(g: Group) -> str:
    """Known cost, and what was not priced, said apart (never $0 for unknown)."""
    parts = []
    if g.priced_calls or not (g.unknown_price_calls or g.usage_missing_calls):
        parts.append(format_usd(g.cost))
    if g.unknown_price_calls:
        parts.append(f"{g.unknown_price_calls} at unknown price")
    if g.usage_missing_calls:
        parts.append(f"{g.usage_missing_calls} without usage")
    return " + ".join(parts)


def _table(caption: str, first: str, groups: list[Group]) -> str:
    head = (f'<thead><tr><th scope="col">{escape(first)}</th><th scope="col" class="num">Calls</th>'
            '<th scope="col" class="num">Errors</th><th scope="col" class="num wide">Input tokens</th>'
            '<th scope="col" class="num wide">Output tokens</th><th scope="col" class="num">Cost</th></tr></thead>')
    body = []
    for g in groups:
        label = NONE_LABEL if g.key is None else str(g.key)
        body.append(
            f'<tr><th scope="row">{escape(label)}</th><td class="num">{g.calls:,}</td>'
            f'<td class="num">{g.errors:,}</td><td class="num wide">{g.tokens["input_tokens"]:,}</td>'
            f'<td class="num wide">{g.tokens["output_tokens"]:,}</td><td class="cost">{escape(cost_cell(g))}</td></tr>'
        )
    if not body:
        body.append('<tr><td colspan="6" class="empty">No calls in this range.</td></tr>')
    return (f'<div class="scroll"><table><caption>{escape(caption)}</caption>{head}'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def chart_by(rows: list[Any], spend: Spend, dimension: str = "model") -> str:
    """Cost per day, stacked by ``dimension`` (the six largest, the rest as "other")."""
    days = spend.days()
    by_key = aggregate(rows, spend.from_date, spend.to_date, dimension, spend.where)
    per_key = {(NONE_LABEL if g.key is None else str(g.key)): [g.per_day.get(d, Decimal(0)) for d in days]
               for g in by_key.groups if g.cost > 0}
    return stacked_bars(days, top_series(per_key), title=f"Cost per day by {dimension}", id_prefix="cost")


def render_html(rows: list[Any], spend: Spend, *, machine: str = "this machine") -> str:
    """The whole page for the rows of one range (``spend`` is the total, grouped any way)."""
    total = spend.total
    where = "".join(f", {escape(k)} = {escape(NONE_LABEL if v is None else v)}" for k, v in spend.where)
    compared = comparison_line(spend)
    cards = [
        ("Cost", format_usd(total.cost)),
        ("Calls", f"{total.calls:,}"),
        ("Errors", f"{total.errors:,}"),
        ("Unknown price", f"{total.unknown_price_calls:,}"),
        ("No usage reported", f"{total.usage_missing_calls:,}"),
        ("Tokens in / out", f"{total.tokens['input_tokens']:,} / {total.tokens['output_tokens']:,}"),
    ]
    notes = []
    if total.unknown_price_calls:
        notes.append(f"{total.unknown_price_calls} call(s) used models without a known price: their cost is not "
                     f"in the totals (add a [[pricing.override]] in config.toml).")
    if total.usage_missing_calls:
        notes.append(f"{total.usage_missing_calls} call(s) carried no token counts (usage_missing): their tokens "
                     f"and cost are not in the totals.")
    if total.errors:
        notes.append(f"{total.errors} call(s) were errors (HTTP 4xx/5xx or no answer): counted as errors, "
                     f"not as spend.")
    sections = []
    for dim, title in TABLES:
        grouped = aggregate(rows, spend.from_date, spend.to_date, dim, spend.where)
        if dim == "project" and all(g.key is None for g in grouped.groups):
            continue  # no attribution in these rows
        sections.append(f'<section aria-labelledby="{dim}-h"><h2 id="{dim}-h">By {title.lower()}</h2>'
                        f"{_table(f'Spend by {title.lower()}', title, grouped.groups)}</section>")
    title = f"LLM spend {spend.from_date} → {spend.to_date}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · Halton Meter</title>
<style>
{PAGE_CSS}{CHART_CSS}</style>
</head>
<body>
<main>
<h1>Spend <span class="muted">· {escape(machine)}</span></h1>
<p class="muted">{escape(title)}{where}. From the local database of Halton Meter; nothing here left this machine.</p>
<section aria-labelledby="totals-h">
<h2 id="totals-h">Totals</h2>
<dl class="totals">{"".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in cards)}</dl>
{f'<p class="note">{escape(compared)}</p>' if compared else ""}
{"".join(f'<p class="note">{escape(n)}</p>' for n in notes)}
</section>
<section aria-labelledby="chart-h">
<h2 id="chart-h">Cost per day</h2>
{chart_by(rows, spend)}
</section>
{"".join(sections)}
</main>
</body>
</html>
"""
