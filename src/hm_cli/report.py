"""report: spend and tokens from the local database (no daemon needed)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from ._ui import clean, console, csv_cell, fail, safe

GROUPINGS = ("model", "provider", "day", "host", "project", "repo", "branch", "program", "user")
"""What --by and --where accept, plus ``tag:KEY``."""
_COLUMN = {"user": "os_user"}  # names on the command line that differ from the column
NONE_LABEL = "(none)"
_TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


@dataclass
class Group:
    key: str | None
    calls: int = 0
    cost: Decimal = Decimal(0)
    priced_calls: int = 0
    unknown_price_calls: int = 0
    usage_missing_calls: int = 0
    errors: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKEN_COLUMNS, 0))
    per_day: dict[str, Decimal] = field(default_factory=dict)
    """Known cost per day (for the sparkline and the charts; not in --json/--csv)."""

    def add(self, row: Any) -> None:
        """Count a row. An unpriced call is exactly one of: an error (HTTP 4xx/5xx or no
        answer: no usage, not spend), a call without token counts (usage_missing), or a
        model the price list does not know (unknown price)."""
        self.calls += 1
        error = row["status"] >= 400 or row["status"] == 0
        if error:
            self.errors += 1
        if row["cost_usd"] is not None:
            self.cost += Decimal(row["cost_usd"])
            self.priced_calls += 1
            self.per_day[row["day"]] = self.per_day.get(row["day"], Decimal(0)) + Decimal(row["cost_usd"])
        elif not error:
            if "usage_missing" in (row["flags"] or "").split():
                self.usage_missing_calls += 1
            else:
                self.unknown_price_calls += 1
        for col in _TOKEN_COLUMNS:
            if row[col] is not None:
                self.tokens[col] += int(row[col])

    def to_dict(self, by: str) -> dict[str, Any]:
        return {
            by: self.key,
            "calls": self.calls,
            **self.tokens,
            "cost_usd": format(self.cost, "f") if self.priced_calls else None,
            "priced_calls": self.priced_calls,
            "unknown_price_calls": self.unknown_price_calls,
            "usage_missing_calls": self.usage_missing_calls,
            "error_calls": self.errors,
        }


def parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{option} must be a date like 2026-11-01, not {value!r}")


def parse_since(value: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", value)
    if not match:
        fail(f"--since must look like 24h, 7d or 4w, not {value!r}")
    n, unit = int(match.group(1)), match.group(2)
    if len(match.group(1)) > 9 or n > _SINCE_MAX[unit]:  # timedelta overflows, and nothing is older than 1970
        fail(f"--since is at most {_SINCE_MAX[unit]}{unit} (100 years), not {value.strip()!r}")
    return {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]


_SINCE_MAX = {"h": 876_000, "d": 36_500, "w": 5_214}
EARLIEST_DAY = date(1970, 1, 1)  # no row is older; the previous period of a range must still be a date


def resolve_range(since: str | None, from_: str | None, to: str | None) -> tuple[str, str]:
    today = datetime.now(UTC).date()
    if since and (from_ or to):
        fail("use either --since or --from/--to, not both")
    if from_ or to:
        start = parse_day(from_, "--from") if from_ else date(1970, 1, 1)
        end = parse_day(to, "--to") if to else today
    else:
        delta = parse_since(since or "7d")
        start = (datetime.now(UTC) - delta).date()
        if delta >= timedelta(days=1):
            start = today - timedelta(days=max(delta.days - 1, 0))  # "7d" = today and the 6 days before
        end = today
    if end < EARLIEST_DAY:
        fail(f"--to must be {EARLIEST_DAY} or later, not {end}")
    start = max(start, EARLIEST_DAY)
    if start > end:
        fail(f"--from ({start}) is after --to ({end})")
    return start.isoformat(), end.isoformat()


def check_dimension(value: str, option: str) -> str:
    """A --by/--where dimension: one of GROUPINGS or ``tag:KEY``; fails with the list otherwise."""
    if value in GROUPINGS:
        return value
    if value.startswith("tag:"):
        from hm_proto import tag_problem  # not on a plain report's path: it costs start-up time

        if tag_problem(value[4:], "") is None:
            return value
    fail(f"cannot group or filter by {value!r}: use one of {', '.join(GROUPINGS)} or tag:KEY (e.g. tag:team)")


def parse_where(items: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """``project=acme`` → ("project", "acme"); ``project=`` matches rows without a project."""
    out: list[tuple[str, str | None]] = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            fail(f"--where needs KEY=VALUE (e.g. --where project=acme), not {item!r}")
        out.append((check_dimension(key.strip(), "--where"), value.strip() or None))
    return out


class _Keys:
    """Reads a dimension off a report row; tags are parsed once per distinct JSON text."""

    def __init__(self) -> None:
        self._tags: dict[str, dict[str, Any]] = {}

    def get(self, row: Any, dim: str) -> str | None:
        if dim.startswith("tag:"):
            text = row["tags"]
            if not text:
                return None
            if text not in self._tags:
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = {}
                self._tags[text] = parsed if isinstance(parsed, dict) else {}
            value = self._tags[text].get(dim[4:])
            return None if value is None else str(value)
        value = row[_COLUMN.get(dim, dim)]
        return None if value is None else str(value)

    def getter(self, columns: tuple[str, ...], dim: str) -> Callable[[tuple[Any, ...]], str | None]:
        """get() for rows that are tuples of ``columns``."""
        if dim.startswith("tag:"):
            at, name = columns.index("tags"), dim[4:]
            return lambda row: self.get({"tags": row[at]}, f"tag:{name}")
        at = columns.index(_COLUMN.get(dim, dim))
        return lambda row: None if row[at] is None else str(row[at])


@dataclass
class Spend:
    """A report's groups and totals, plus what only the terminal and HTML views show."""

    from_date: str
    to_date: str
    by: str
    where: list[tuple[str, str | None]]
    groups: list[Group]
    total: Group
    previous: Group | None
    """The same filter over the period of the same length just before (None: not compared)."""
    previous_range: tuple[str, str] | None

    def days(self) -> list[str]:
        start, end = date.fromisoformat(self.from_date), date.fromisoformat(self.to_date)
        return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]

    def report(self) -> dict[str, Any]:
        """The --json shape (docs/daemon.md)."""
        return {
            "from_date": self.from_date,
            "to_date": self.to_date,
            "by": self.by,
            "where": {dim: value for dim, value in self.where},
            "groups": [g.to_dict(self.by) for g in self.groups],
            "total": self.total.to_dict(self.by) | {self.by: None},
        }


MAX_COMPARED_DAYS = 366
"""Longer ranges (e.g. --from 1970-01-01) are not compared with a previous period."""


def _previous_range(from_day: str, to_day: str) -> tuple[str, str] | None:
    start, end = date.fromisoformat(from_day), date.fromisoformat(to_day)
    span = (end - start).days + 1
    if span > MAX_COMPARED_DAYS:
        return None
    return (start - timedelta(days=span)).isoformat(), (start - timedelta(days=1)).isoformat()


def read_rows(home: Any, from_day: str, to_day: str) -> list[Any]:
    """The report columns of the rows of [from_day, to_day]; a bad database fails in one line."""
    from hm_agent.home import paths
    from hm_agent.store import Store, StoreError, unreadable

    hp = paths(home)
    if not hp.db.exists():
        return []
    try:
        with Store(hp.db, readonly=True) as store:
            return store.report_rows(from_day, to_day)
    except StoreError as exc:
        fail(str(exc))
    except Exception as exc:  # sqlite3.Error and friends: one line with the fix, no traceback
        fail(unreadable(hp.db, exc))


def collect(home: Any, from_day: str, to_day: str, by: str,
            where: list[tuple[str, str | None]] | None = None, *, compare: bool = True,
            rollups: bool = True) -> Spend:
    """The report of [from_day, to_day]: from the local rollups when they hold the range
    exactly, else from every row (``rollups=False`` forces that: bench_report.py compares)."""
    previous_range = _previous_range(from_day, to_day) if compare else None
    first = previous_range[0] if previous_range else from_day
    if rollups:
        spend = _from_rollups(home, first, from_day, to_day, by, list(where or []), previous_range)
        if spend is not None:
            return spend
    rows = read_rows(home, first, to_day)
    return aggregate(rows, from_day, to_day, by, where, previous_range, source=home)


def _cost(whole: int, micro: int, pico: int, places: int) -> Decimal:
    """What a Decimal sum of the rows gives: the exact value, with the places of its longest cost."""
    exact = Decimal(whole) + Decimal(micro).scaleb(-6) + Decimal(pico).scaleb(-12)
    return exact.quantize(Decimal(1).scaleb(-places))


class _Sums:
    """Integer sums of rollups (ROLLUP_SUMS, then the most decimals), per group and per day."""

    def __init__(self) -> None:
        self.sums: list[int] = []
        self.per_day: dict[str, list[int]] = {}

    @staticmethod
    def _merge(acc: list[int], values: tuple[int, ...]) -> None:
        if not acc:
            acc.extend(values)
            return
        for i, v in enumerate(values[:-1]):
            acc[i] += v
        acc[-1] = max(acc[-1], values[-1])

    def add(self, day: str, values: tuple[int, ...]) -> None:
        self._merge(self.sums, values)
        self._merge(self.per_day.setdefault(day, []), values)

    def group(self, key: str | None) -> Group:
        from hm_agent.store import ROLLUP_SUMS

        group = Group(key)
        if not self.sums:
            return group
        named = dict(zip((*ROLLUP_SUMS, "places"), self.sums, strict=True))
        group.calls, group.priced_calls, group.errors = named["calls"], named["priced_calls"], named["error_calls"]
        group.usage_missing_calls, group.unknown_price_calls = named["usage_missing_calls"], named["unknown_price_calls"]
        group.tokens = {col: named[col] for col in _TOKEN_COLUMNS}
        if group.priced_calls:
            group.cost = _cost(named["cost_whole"], named["cost_micro"], named["cost_pico"], named["places"])
        cost_at = (*(ROLLUP_SUMS.index(c) for c in ("priced_calls", "cost_whole", "cost_micro", "cost_pico")), -1)
        for day, sums in self.per_day.items():
            priced, whole, micro, pico, places = (sums[i] for i in cost_at)
            if priced:
                group.per_day[day] = _cost(whole, micro, pico, places)
        return group


def _from_rollups(home: Any, first: str, from_day: str, to_day: str, by: str,
                  where: list[tuple[str, str | None]], previous_range: tuple[str, str] | None) -> Spend | None:
    """The Spend aggregate() would make, from the store's rollups (hm_agent.store), or None:
    then the rows must be read (a database not upgraded yet, a value the sums cannot hold)."""
    from hm_agent.home import paths
    from hm_agent.store import Store, StoreError, unreadable

    def column(dim: str) -> str:
        return "tags" if dim.startswith("tag:") else _COLUMN.get(dim, dim)

    equal = [(column(dim), value) for dim, value in where if not dim.startswith("tag:")]
    tagged = [(dim, value) for dim, value in where if dim.startswith("tag:")]
    group_by = tuple(dict.fromkeys(["day", column(by), *(["tags"] if tagged else [])]))
    hp = paths(home)
    if not hp.db.exists():
        return None
    try:
        with Store(hp.db, readonly=True) as store:
            rolled = store.report_rollups(first, to_day, group_by, equal)
    except StoreError as exc:
        fail(str(exc))
    except Exception as exc:  # sqlite3.Error and friends: one line with the fix, no traceback
        fail(unreadable(hp.db, exc))
    if rolled is None:
        return None
    keys = _Keys()
    at = {c: i for i, c in enumerate(group_by)}
    key_of = keys.getter(group_by, by)
    tests = [(keys.getter(group_by, dim), value) for dim, value in tagged]
    groups: dict[str | None, _Sums] = {}
    total, previous = _Sums(), _Sums()
    for roll in rolled:
        if tests and any(get(roll) != value for get, value in tests):
            continue
        day, values = roll[at["day"]], roll[len(group_by):]
        if day < from_day:
            previous.add(day, values)
            continue
        groups.setdefault(key_of(roll), _Sums()).add(day, values)
        total.add(day, values)
    ordered = sorted((sums.group(key) for key, sums in groups.items()),
                     key=lambda g: (g.key or "" if by == "day" else (-g.cost, -g.calls, g.key or "")))
    return Spend(from_day, to_day, by, where, ordered, total.group("total"),
                 previous.group("previous") if previous_range else None, previous_range)


def aggregate(rows: list[Any], from_day: str, to_day: str, by: str,
              where: list[tuple[str, str | None]] | None = None,
              previous_range: tuple[str, str] | None = None, *, source: Any = None) -> Spend:
    """Group rows by one dimension; rows before from_day count towards the previous period.

    A damaged value (text where a number belongs) fails with one line naming the
    database of the home ``source``."""
    groups: dict[str | None, Group] = {}
    total = Group("total")
    previous = Group("previous") if previous_range else None
    keys = _Keys()
    try:
        for row in rows:
            if where and any(keys.get(row, dim) != value for dim, value in where):
                continue
            if row["day"] < from_day:
                if previous is not None and row["day"] >= previous_range[0]:  # type: ignore[index]
                    previous.add(row)
                continue
            if row["day"] > to_day:
                continue
            key = keys.get(row, by)
            groups.setdefault(key, Group(key)).add(row)
            total.add(row)
    except Exception as exc:  # a damaged value (text where a number belongs): one line, no traceback
        from hm_agent.home import paths
        from hm_agent.store import unreadable

        fail(unreadable(paths(source).db, exc))
    ordered = sorted(groups.values(),
                     key=lambda g: (g.key or "" if by == "day" else (-g.cost, -g.calls, g.key or "")))
    return Spend(from_day, to_day, by, list(where or []), ordered, total, previous, previous_range)


def build_report(home: Any, from_day: str, to_day: str, by: str,
                 where: list[tuple[str, str | None]] | None = None, *, rollups: bool = True) -> dict[str, Any]:
    """The --json shape (no previous-period comparison)."""
    return collect(home, from_day, to_day, by, where, compare=False, rollups=rollups).report()


def _money(value: str | None, unpriced: int) -> str:
    from hm_charts import format_usd

    if value is None:
        return "unknown price" if unpriced else "$0"
    return format_usd(Decimal(value)) + (" + unknown" if unpriced else "")


def _label(key: str | None) -> str:
    """A group's name as shown in the terminal (outside text: control characters removed)."""
    return clean(NONE_LABEL if key is None else key, 120)


def _change(now: Decimal, before: Decimal) -> str:
    if before == 0:
        return "new" if now else "no change"
    pct = (now - before) / before * 100
    if abs(pct) < Decimal("0.5"):
        return "no change"
    return f"{'+' if pct > 0 else '−'}{abs(pct):.0f}%"


def comparison_line(spend: Spend) -> str | None:
    """'previous 7 days (2026-11-15 → 2026-11-21): $1.20, 40 calls → now +25%, +10%'."""
    prev, rng = spend.previous, spend.previous_range
    if prev is None or rng is None:
        return None
    days = len(spend.days())
    span = f"previous {days} day{'s' if days != 1 else ''} ({rng[0]} → {rng[1]})"
    if not prev.calls:
        return f"{span}: no calls recorded"
    from hm_charts import format_usd

    return (f"{span}: {format_usd(prev.cost)}, {prev.calls:,} call{'s' if prev.calls != 1 else ''}; "
            f"now {_change(spend.total.cost, prev.cost)} in cost, {_change(Decimal(spend.total.calls), Decimal(prev.calls))} in calls")


# Columns of the terminal table, most important first: at a narrow width the
# last ones are left out whole, so the key and the cost are never cut.
_OPTIONAL = ("cache write", "cache read", "output", "input", "per day")


def _cells(spend: Spend, g: Group, days: list[str], spark_cells: int) -> dict[str, str]:
    from hm_charts import hbar, sparkline

    values = [g.per_day.get(d, Decimal(0)) for d in days]
    if spend.by == "day":
        peak = max((x.cost for x in spend.groups), default=Decimal(0))
        trend = hbar(g.cost, peak, 12) if g is not spend.total else ""
    else:
        trend = sparkline(values, spark_cells)
    d = g.to_dict(spend.by)
    return {
        "calls": f"{g.calls:,}",
        "errors": f"{g.errors:,}" if g.errors else "",
        "input": f"{g.tokens['input_tokens']:,}",
        "output": f"{g.tokens['output_tokens']:,}",
        "cache read": f"{g.tokens['cache_read_tokens']:,}",
        "cache write": f"{g.tokens['cache_write_tokens']:,}",
        "cost (USD)": _money(d["cost_usd"], g.unknown_price_calls + g.usage_missing_calls),
        "per day": trend,
    }


def _header(name: str, by: str) -> str:
    return ("spend" if by == "day" else "per day") if name == "per day" else name


def render_table(spend: Spend, width: int | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    if width is not None:
        out.width = width
    by = spend.by
    if not spend.groups:
        out.print(f"No LLM calls recorded between {spend.from_date} and {spend.to_date}. "
                  f"Send some through the proxy (eval \"$(halton-meter env)\") and check `halton-meter status`.")
        return
    days = spend.days()
    columns = ["calls", "errors", "input", "output", "cache read", "cache write", "cost (USD)", "per day"]
    if not spend.total.errors:
        columns.remove("errors")
    if by != "day" and len(days) < 2:
        columns.remove("per day")
    key_width = max(len(by), 5, *(len(_label(g.key)) for g in spend.groups))

    def layout(cells: int) -> tuple[list[tuple[Group, str, dict[str, str]]], dict[str, str], int]:
        rows = [(g, _label(g.key), _cells(spend, g, days, cells)) for g in spend.groups]
        total_cells = _cells(spend, spend.total, days, cells)
        widths = {name: max(len(_header(name, by)), len(total_cells[name]), *(len(c[name]) for _, _, c in rows))
                  for name in total_cells}
        # rich's default box: 1 + (content + 3) per column
        return rows, total_cells, 1 + key_width + 3 + sum(widths[c] + 3 for c in columns)

    spark_cells = min(len(days), 14)
    rows, total_cells, needed = layout(spark_cells)
    for name in _OPTIONAL:
        if needed <= out.width:
            break
        if name == "per day" and by != "day" and spark_cells > 7:
            spark_cells = 7  # a week's worth of cells before giving the column up
            rows, total_cells, needed = layout(spark_cells)
            if needed <= out.width:
                break
        if name in columns:
            columns.remove(name)
            rows, total_cells, needed = layout(spark_cells)
    where = "".join(f", {k} = {_label(v)}" for k, v in spend.where)
    table = Table(title=safe(f"LLM spend {spend.from_date} → {spend.to_date} by {by}{where}"),
                  title_justify="left")
    table.add_column(by, no_wrap=needed <= out.width, overflow="fold")  # folded, never cut with "…"
    for name in columns:
        table.add_column(_header(name, by), justify="left" if name == "per day" else "right", no_wrap=True)
    for g, label, cells in rows:
        table.add_row(escape(label), *(cells[c] for c in columns),
                      end_section=g is spend.groups[-1])
    table.add_row("[bold]total[/bold]", *(total_cells[c] for c in columns))
    out.print(table)
    line = comparison_line(spend)
    if line:
        out.print(escape(line))
    total = spend.total
    if total.unknown_price_calls:
        out.print(f"[yellow]![/yellow] {total.unknown_price_calls} call(s) have an unknown price (a model the "
                  f"price library does not know): not counted as $0. Add a {safe('[[pricing.override]]')} in config.toml.")
    if total.usage_missing_calls:
        out.print(f"[yellow]![/yellow] {total.usage_missing_calls} call(s) carried no token counts (usage_missing): "
                  f"e.g. an OpenAI stream without stream_options.include_usage. "
                  f"Their tokens and cost are not in the totals.")
    if total.errors:
        out.print(f"[yellow]![/yellow] {total.errors} call(s) were errors (HTTP 4xx/5xx or no answer, e.g. a wrong "
                  f"API key or model name): counted as errors, not as spend or unknown price.")
    hidden = [c for c in ("input", "output", "cache read", "cache write") if c not in columns]
    if hidden:
        out.print(f"[dim]({', '.join(hidden)} left out at {out.width} columns: see --json, --csv or --html)[/dim]")


def render_csv(rep: dict[str, Any]) -> str:
    buf = io.StringIO()
    groups = rep["groups"]
    fields = [rep["by"], *[k for k in rep["total"] if k != rep["by"]]]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for g in groups:  # outside strings (models, hosts…): no control characters, no formulas
        writer.writerow({k: csv_cell(v) for k, v in g.items()})
    return buf.getvalue()


DEFAULT_HTML = "halton-meter-report.html"


@click.command()
@click.option("--since", default=None, help="How far back: 24h, 7d (default), 4w.")
@click.option("--from", "from_", default=None, metavar="DATE", help="First day (YYYY-MM-DD, UTC).")
@click.option("--to", default=None, metavar="DATE", help="Last day (YYYY-MM-DD, UTC; default today).")
@click.option("--by", default="model", show_default=True, metavar="DIMENSION",
              help="Group rows by: model, provider, day, host, project, repo, branch, program, user or tag:KEY.")
@click.option("--where", multiple=True, metavar="KEY=VALUE",
              help="Only rows where KEY (a --by dimension) is VALUE; repeatable; KEY= means not set.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/daemon.md).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one line per group.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "focus"]), default=None,
              help="Output format; focus = a FOCUS 1.2 cost CSV, one line per UTC day, provider, model "
                   "and project (docs/metrics.md).")
@click.option("--limits", "limits", is_flag=True,
              help="Show the latest rate-limit headers per host and model instead of spend.")
@click.option("--reprice", is_flag=True,
              help="First price rows whose cost is unknown with the price data in use (see `prices update`).")
@click.option("--html", "html_file", is_flag=False, flag_value=DEFAULT_HTML, default=None, metavar="[FILE]",
              help=f"A self-contained HTML page with charts (default file {DEFAULT_HTML}; - for stdout).")
def report(since: str | None, from_: str | None, to: str | None, by: str, where: tuple[str, ...],
           as_json: bool, as_csv: bool, fmt: str | None, limits: bool, reprice: bool,
           html_file: str | None) -> None:
    """Spend and tokens from the local database; works with the daemon stopped.

    Calls with an unknown price are shown as "unknown price", never $0.

    \b
    Examples:
      halton-meter report
      halton-meter report --since 30d --by provider
      halton-meter report --from 2026-11-01 --to 2026-11-24 --by day --csv > spend.csv
      halton-meter report --by project
      halton-meter report --by branch --where project=acme --where tag:team=ml
      halton-meter report --since 30d --format focus > focus.csv
      halton-meter report --reprice     # after `halton-meter prices update`
      halton-meter report --limits      # latest x-ratelimit-* / anthropic-ratelimit-* per host and model
      halton-meter report --since 30d --html spend.html
    """
    from hm_agent.home import home_dir

    if as_json + as_csv + (fmt is not None) + (html_file is not None) > 1:
        fail("choose one of --json, --csv and --html (or one --format)")
    as_json, as_csv = as_json or fmt == "json", as_csv or fmt == "csv"
    if limits:
        _limits(home_dir(), as_json)
        return
    from_day, to_day = resolve_range(since, from_, to)
    if reprice:
        _reprice(home_dir())
    if fmt == "focus":
        from .focus import focus_csv

        click.echo(focus_csv(home_dir(), from_day, to_day, parse_where(where)), nl=False)
        return
    dim, filters = check_dimension(by, "--by"), parse_where(where)
    if as_json or as_csv:
        rep = build_report(home_dir(), from_day, to_day, dim, filters)
        click.echo(json.dumps(rep, indent=2) if as_json else render_csv(rep), nl=as_json)
        return
    if html_file is not None:
        write_html_report(home_dir(), from_day, to_day, dim, filters, html_file)
        return
    with _reading():
        spend = collect(home_dir(), from_day, to_day, dim, filters)
    render_table(spend)


def html_page(home: Any, from_day: str, to_day: str, by: str, where: list[tuple[str, str | None]]) -> str:
    from .report_html import render_html

    previous_range = _previous_range(from_day, to_day)
    with _reading():
        rows = read_rows(home, previous_range[0] if previous_range else from_day, to_day)
    spend = aggregate(rows, from_day, to_day, by, where, previous_range, source=home)
    import socket

    return render_html(rows, spend, machine=socket.gethostname() or "this machine")


def write_html_report(home: Any, from_day: str, to_day: str, by: str, where: list[tuple[str, str | None]],
                      target: str) -> None:
    page = html_page(home, from_day, to_day, by, where)
    if target == "-":
        click.echo(page, nl=False)
        return
    from pathlib import Path

    path = Path(target).expanduser()
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}. Pick another file: --html PATH")
    console().print(f"[green]●[/green] wrote {path.resolve()} ({len(page.encode()):,} bytes); open it in a browser")


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """A spinner on stderr while a big database is read (only on a terminal)."""
    err = console(stderr=True)
    if not err.is_terminal:
        yield
        return
    with err.status("Reading the database…", spinner="dots"):
        yield


@click.command()
@click.option("--since", default=None, help="How far back: 24h, 7d, 30d (default), 4w.")
@click.option("--from", "from_", default=None, metavar="DATE", help="First day (YYYY-MM-DD, UTC).")
@click.option("--to", default=None, metavar="DATE", help="Last day (YYYY-MM-DD, UTC; default today).")
@click.option("--no-browser", is_flag=True, help="Write the page and print its path; do not open a browser.")
def dashboard(since: str | None, from_: str | None, to: str | None, no_browser: bool) -> None:
    """Open the local spend as a web page: charts and tables, no server, no network.

    Writes `report --html` to a private temporary file and opens it in the
    browser when there is a display; otherwise prints where it is.

    \b
    Example:
      halton-meter dashboard --since 30d
    """
    import os
    import tempfile

    from hm_agent.home import home_dir

    from ._ui import open_browser

    from_day, to_day = resolve_range(since or (None if from_ or to else "30d"), from_, to)
    page = html_page(home_dir(), from_day, to_day, "model", [])
    fd, name = tempfile.mkstemp(prefix="halton-meter-dashboard-", suffix=".html")  # mode 0600
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(page)
    out = console()
    out.print(f"[green]●[/green] wrote {name}")
    if no_browser or not open_browser(f"file://{name}"):
        out.print(f"  Open it in a browser: file://{name}")


def _reprice(home: Any) -> None:
    """report --reprice: unknown costs priced with the current price data (one line on stderr)."""
    from hm_agent.config import ConfigError, load_config
    from hm_agent.home import paths
    from hm_agent.prices import reprice_unknown

    hp = paths(home)
    if not hp.db.exists():
        return
    try:
        overrides = load_config(hp).pricing_overrides
    except ConfigError as exc:
        fail(str(exc))
    done = reprice_unknown(hp, overrides)
    note = (f"; {done.synced} of them were already synced and keep an unknown cost in the cloud"
            if done.synced else "")
    click.echo(f"Repriced {done.repriced} rows with {done.price_version or 'the current price data'}; "
               f"{done.still_unknown} still unknown{note}.", err=True)


def _limits(home: Any, as_json: bool) -> None:
    """report --limits: the latest rate-limit state each host and model announced."""
    from hm_agent.home import paths

    from .limits import describe, read_limits

    entries = read_limits(paths(home).db)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("No rate-limit headers seen yet (providers send them with each answer).")
        return
    width = min(60, max(len(f"{e['host']} {e['model']}") for e in entries))
    for e in entries:
        name = clean(f"{e['host']} {e['model']}", 60)
        click.echo(f"{name:<{width}}  {clean(describe(e), 400)}  ({clean(e['at'], 40)})")
