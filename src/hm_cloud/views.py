"""Presentation helpers for the pages: money, relative times, the SVG chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from .store import NANOS


def money(nanos: int) -> str:
    value = Decimal(nanos) / NANOS
    if value == 0:
        return "$0.00"
    if abs(value) < Decimal("0.0001"):
        return "<$0.0001"  # a known, tiny cost: never shown as if it were $0
    if abs(value) < Decimal("0.01"):
        return f"${value:.4f}"
    return f"${value:,.2f}"


def cost_cell(group: dict[str, Any]) -> str:
    """Known cost, then the rows with no price by kind: never shown as $0.

    Errors (HTTP 4xx/5xx, no usage) are not spend: they have their own column.
    """
    unknown, no_usage = group.get("unknown", 0), group.get("no_usage", 0)
    if group["rows"] and unknown == group["rows"]:
        return "unknown price"
    parts = [money(group["nanos"])]
    if unknown:
        parts.append(f"{unknown} at unknown price")
    if no_usage:
        parts.append(f"{no_usage} without usage")
    return " + ".join(parts)


def timestamp(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def relative_time(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    ago = max(0, int(now - then))
    if ago < 60:
        return f"{ago}s ago"
    if ago < 3600:
        return f"{ago // 60} min ago"
    if ago < 86400:
        return f"{ago // 3600} h ago"
    days = ago // 86400
    return f"{days} day ago" if days == 1 else f"{days} days ago"


def day_range(from_date: str, to_date: str) -> list[str]:
    start, end = date.fromisoformat(from_date), date.fromisoformat(to_date)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def cost_chart(per_series: dict[str, dict[str, int]], from_date: str, to_date: str, by: str,
               line: tuple[Decimal, str] | None = None, width: int = 640) -> str:
    """The stacked cost-per-day chart (hm_charts, the same code as the local report);
    ``line``: a workspace budget per day, drawn dashed. ``width`` is the SVG's own
    width: the page draws it at about that size so its 15 px text stays 15 px."""
    from hm_charts import Series, stacked_bars, top_series

    days = day_range(from_date, to_date)
    totals = {label: sum(per_day.values()) for label, per_day in per_series.items() if any(per_day.values())}
    ranked = sorted(totals, key=lambda k: (-totals[k], k))  # top_series' order, on integers
    values = {label: [Decimal(per_series[label].get(d, 0)) / NANOS for d in days] for label in ranked[:CHART_SERIES]}
    if len(ranked) > CHART_SERIES + 1:  # the rest summed here: 50,000 models made 1.5M Decimals (3.7 s a chart)
        rest: dict[str, int] = {}
        for label in ranked[CHART_SERIES:]:
            for d, nanos in per_series[label].items():
                rest[d] = rest.get(d, 0) + nanos
        series = [*top_series(values, CHART_SERIES),
                  Series(f"other ({len(ranked) - CHART_SERIES})", [Decimal(rest.get(d, 0)) / NANOS for d in days])]
    else:
        values.update({label: [Decimal(per_series[label].get(d, 0)) / NANOS for d in days]
                       for label in ranked[CHART_SERIES:]})
        series = top_series(values, CHART_SERIES)
    return stacked_bars(days, series, title=f"Cost per day by {by}", id_prefix=f"cost-{width}",
                        line=line, width=width, empty_text="No priced calls in this range.")


CHART_SERIES = 6  # series drawn; the rest is one "other (N)" series


CHART_SPLITS = (("model", "Model"), ("machine", "Machine"), ("person", "Person"), ("member", "Member"),
                ("provider", "Provider"))
SORTS = ("cost", "calls", "name")


MAX_TABLE_ROWS = 100  # rows of one dashboard table; the rest is one summed row (the CSV has them all)


def top_groups(groups: list[dict[str, Any]], limit: int = MAX_TABLE_ROWS) -> list[dict[str, Any]]:
    """The first ``limit`` of sorted ``groups``, then one row summing the rest.

    A device names its models, projects and tags: 50,000 names made the dashboard a
    29 MB page that took 23 s to render, for everyone in the workspace."""
    if len(groups) <= limit:
        return groups
    rest = groups[limit:]
    summed: dict[str, Any] = {name: sum(int(g.get(name) or 0) for g in rest)
                              for name in ("rows", "nanos", "unknown", "no_usage", "errors", "input_tokens",
                                           "output_tokens")}
    summed.update(key=None, label=f"{len(rest):,} more (download the CSV for all)", href=None)
    return [*groups[:limit], summed]


def sort_groups(groups: list[dict[str, Any]], sort: str) -> None:
    """Biggest spend first (the default), most calls first, or by name; equal ones
    (two machines of one hostname) by key, so the order never depends on the query's."""
    if sort == "calls":
        groups.sort(key=lambda g: (-g["rows"], -g["nanos"], g["label"], g["key"] or ""))
    elif sort == "name":
        groups.sort(key=lambda g: (g["label"].lower(), g["label"], g["key"] or ""))
    else:
        groups.sort(key=lambda g: (-g["nanos"], -g["rows"], g["label"], g["key"] or ""))


def change_text(now: int, before: int, days: int) -> str:
    """The change of a total against the previous period of equal length, in words."""
    if before == 0:
        return f"no priced spend in the previous {days} days" if now else f"none in the previous {days} days either"
    pct = (Decimal(now - before) * 100 / Decimal(before)).quantize(Decimal(1))
    sign = "+" if pct > 0 else ("−" if pct < 0 else "±")
    return f"{sign}{abs(pct)}% vs the previous {days} days ({money(before)})"


_UNPRICED: list[Any] = [None, set()]
"""[genai-prices snapshot, (provider, model) it has no price for]: each is looked up once per snapshot."""


def cache_savings(reads: list[tuple[str, str, int]]) -> tuple[Decimal, int, int]:
    """(dollars that cache reads saved against the full input price, tokens priced, tokens of
    models genai-prices does not know). Prices are genai-prices' bundled snapshot."""
    from genai_prices import Usage, calc_price, data_snapshot

    snapshot = data_snapshot.get_snapshot()
    if _UNPRICED[0] is not snapshot:  # prices changed: forget which models had none
        _UNPRICED[:] = [snapshot, set()]
    no_price: set[tuple[str, str]] = _UNPRICED[1]
    saved, priced, unknown = Decimal(0), 0, 0
    for provider, model, tokens in reads:
        if (provider, model) in no_price:  # genai-prices caches what it finds, not what it does not
            unknown += tokens
            continue
        try:
            full = calc_price(Usage(input_tokens=tokens), model, provider_id=provider).total_price
            cached = calc_price(Usage(input_tokens=tokens, cache_read_tokens=tokens), model,
                                provider_id=provider).total_price
        except (LookupError, ValueError) as exc:
            if isinstance(exc, LookupError) and len(no_price) < 10_000:
                no_price.add((provider, model))
            unknown += tokens
            continue
        saved += Decimal(str(full)) - Decimal(str(cached))
        priced += tokens
    return saved, priced, unknown


# -- group and filter by attribution ----------------------------------------------------

GROUP_CHOICES = (
    ("project", "Project"),
    ("member", "Member (user@machine)"),
    ("repo", "Repository"),
    ("branch", "Branch"),
    ("program", "Program"),
    ("tag", "Tag"),
)
FILTER_DIMENSIONS = ("project", "member", "repo", "branch", "program", "machine", "person", "model", "provider")
NONE_VALUE = "(none)"
_MAX_FILTER_CHARS = 300


@dataclass(frozen=True)
class Slicing:
    """The dashboard's ``group`` and filters, read from the query string (bad parts ignored, said once)."""

    group: str  # a store dimension: project, member, ..., or tag:KEY
    tag_key: str
    filters: dict[str, str | None]
    problems: list[str]
    chart: str = "model"  # what the chart's layers are: one of CHART_SPLITS
    sort: str = "cost"  # how the tables are ordered: one of SORTS

    def params(self, **change: str | None) -> dict[str, str]:
        """The query parameters of this view, with some changed (None removes one)."""
        out: dict[str, str] = {}
        group = "tag" if self.group.startswith("tag:") else self.group
        out["group"] = group
        if self.tag_key:
            out["tag_key"] = self.tag_key
        for dim, value in self.filters.items():
            if dim.startswith("tag:"):
                out["tag"] = f"{dim[4:]}={value or ''}"
            else:
                out[dim] = NONE_VALUE if value is None else value
        if self.chart != "model":
            out["chart"] = self.chart
        if self.sort != "cost":
            out["sort"] = self.sort
        for key, value in change.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def filter_link(self, key: str | None) -> dict[str, str]:
        """Parameters that keep this view and filter to one value of the grouped dimension."""
        if self.group.startswith("tag:"):
            return self.params(tag=f"{self.group[4:]}={key or ''}")
        return self.params(**{self.group: NONE_VALUE if key is None else key})

    def chips(self) -> list[tuple[str, dict[str, str]]]:
        """Each active filter as (text, parameters without it)."""
        out = []
        for dim, value in self.filters.items():
            shown = NONE_VALUE if value is None else value
            if dim.startswith("tag:"):
                out.append((f"tag {dim[4:]} = {shown}", self.params(tag=None)))
            else:
                out.append((f"{dim} = {shown}", self.params(**{dim: None})))
        return out


def read_slicing(query: Any) -> Slicing:
    from hm_proto.server import tag_problem

    problems: list[str] = []
    group = query.get("group") or "project"
    tag_key = (query.get("tag_key") or "").strip()
    if group == "tag":
        if tag_problem(tag_key, "") is None:
            group = f"tag:{tag_key}"
        else:
            problems.append("Grouping by tag needs a tag key like team (letters, digits, _ . : / -).")
            group = "project"
    elif group not in dict(GROUP_CHOICES):
        problems.append("Unknown grouping; showing projects.")
        group = "project"
    filters: dict[str, str | None] = {}
    for dim in FILTER_DIMENSIONS:
        value = query.get(dim)
        if value is None or value == "":
            continue
        if len(value) > _MAX_FILTER_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            problems.append(f"The {dim} filter is not a valid value and was ignored.")
            continue
        filters[dim] = None if value == NONE_VALUE else value
    tag = query.get("tag")
    if tag:
        key, eq, value = tag.partition("=")
        if eq and tag_problem(key, value) is None:
            filters[f"tag:{key}"] = value or None
        else:
            problems.append("The tag filter must look like team=ml and was ignored.")
    chart = query.get("chart") or "model"
    if chart not in dict(CHART_SPLITS):
        problems.append("The chart splits by model, machine, person, member or provider; showing models.")
        chart = "model"
    sort = query.get("sort") or "cost"
    if sort not in SORTS:
        problems.append("Tables sort by cost, calls or name; sorted by cost.")
        sort = "cost"
    return Slicing(group, tag_key if group.startswith("tag:") else "", filters, problems, chart, sort)
