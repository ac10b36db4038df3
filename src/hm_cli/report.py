"""report: spend and tokens from the local database (no daemon needed)."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import click

from ._ui import clean, console, fail, safe

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

    def add(self, row: Any) -> None:
        self.calls += 1
        if row["cost_usd"] is None:
            self.unknown_price_calls += 1
        else:
            self.cost += Decimal(row["cost_usd"])
            self.priced_calls += 1
        flags = (row["flags"] or "").split()
        if "usage_missing" in flags:
            self.usage_missing_calls += 1
        if row["status"] >= 400 or row["status"] == 0:
            self.errors += 1
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
    return {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]


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
    if start > end:
        fail(f"--from ({start}) is after --to ({end})")
    return start.isoformat(), end.isoformat()


def check_dimension(value: str, option: str) -> str:
    """A --by/--where dimension: one of GROUPINGS or ``tag:KEY``; fails with the list otherwise."""
    from hm_proto import tag_problem

    if value in GROUPINGS:
        return value
    if value.startswith("tag:") and tag_problem(value[4:], "") is None:
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


def build_report(home: Any, from_day: str, to_day: str, by: str,
                 where: list[tuple[str, str | None]] | None = None) -> dict[str, Any]:
    from hm_agent.home import paths
    from hm_agent.store import unreadable

    hp = paths(home)
    rows = read_rows(home, from_day, to_day)
    groups: dict[str | None, Group] = {}
    total = Group("total")
    keys = _Keys()
    try:
        for row in rows:
            if where and any(keys.get(row, dim) != value for dim, value in where):
                continue
            key = keys.get(row, by)
            groups.setdefault(key, Group(key)).add(row)
            total.add(row)
    except Exception as exc:  # a damaged value (text where a number belongs): one line, no traceback
        fail(unreadable(hp.db, exc))
    ordered = sorted(groups.values(),
                     key=lambda g: (g.key or "" if by == "day" else (-g.cost, -g.calls, g.key or "")))
    return {
        "from_date": from_day,
        "to_date": to_day,
        "by": by,
        "where": {dim: value for dim, value in where or []},
        "groups": [g.to_dict(by) for g in ordered],
        "total": total.to_dict(by) | {by: None},
    }


def _money(value: str | None, unknown: int) -> str:
    if value is None:
        return "unknown price" if unknown else "$0"
    amount = Decimal(value)
    text = f"${amount:,.6f}" if amount < 1 else f"${amount:,.2f}"
    return text + (" + unknown" if unknown else "")


def render_table(rep: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    by = rep["by"]
    where = "".join(f", {k} = {NONE_LABEL if v is None else v}" for k, v in rep.get("where", {}).items())
    table = Table(title=safe(f"LLM spend {rep['from_date']} → {rep['to_date']} by {by}{where}"),
                  title_justify="left")
    table.add_column(by)
    for col in ("calls", "input", "output", "cache read", "cache write"):
        table.add_column(col, justify="right")
    table.add_column("cost (USD)", justify="right")
    for g in [*rep["groups"], rep["total"]]:
        is_total = g is rep["total"]
        table.add_row(
            "[bold]total[/bold]" if is_total else safe(NONE_LABEL if g[by] is None else g[by], 120),
            f"{g['calls']:,}", f"{g['input_tokens']:,}", f"{g['output_tokens']:,}",
            f"{g['cache_read_tokens']:,}", f"{g['cache_write_tokens']:,}",
            _money(g["cost_usd"], g["unknown_price_calls"]),
            end_section=not is_total and g is rep["groups"][-1],
        )
    if not rep["groups"]:
        out.print(f"No LLM calls recorded between {rep['from_date']} and {rep['to_date']}. "
                  f"Send some through the proxy (eval \"$(halton-meter env)\") and check `halton-meter status`.")
        return
    out.print(table)
    total = rep["total"]
    if total["unknown_price_calls"]:
        out.print(f"[yellow]![/yellow] {total['unknown_price_calls']} call(s) have an unknown price (a model the "
                  f"price library does not know): not counted as $0. Add a {safe('[[pricing.override]]')} in config.toml.")
    if total["usage_missing_calls"]:
        out.print(f"[yellow]![/yellow] {total['usage_missing_calls']} call(s) carried no token counts (usage_missing): "
                  f"e.g. an OpenAI stream without stream_options.include_usage, or an error response. "
                  f"Their tokens and cost are not in the totals.")


def render_csv(rep: dict[str, Any]) -> str:
    buf = io.StringIO()
    groups = rep["groups"]
    fields = [rep["by"], *[k for k in rep["total"] if k != rep["by"]]]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for g in groups:  # outside strings (models, hosts…) without terminal control characters
        writer.writerow({k: clean(v, 10_000) if isinstance(v, str) else v for k, v in g.items()})
    return buf.getvalue()


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
@click.option("--reprice", is_flag=True,
              help="First price rows whose cost is unknown with the price data in use (see `prices update`).")
def report(since: str | None, from_: str | None, to: str | None, by: str, where: tuple[str, ...],
           as_json: bool, as_csv: bool, fmt: str | None, reprice: bool) -> None:
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
    """
    from hm_agent.home import home_dir

    if as_json + as_csv + (fmt is not None) > 1:
        fail("choose one of --json and --csv (or one --format)")
    as_json, as_csv = as_json or fmt == "json", as_csv or fmt == "csv"
    from_day, to_day = resolve_range(since, from_, to)
    if reprice:
        _reprice(home_dir())
    if fmt == "focus":
        from .focus import focus_csv

        click.echo(focus_csv(home_dir(), from_day, to_day, parse_where(where)), nl=False)
        return
    rep = build_report(home_dir(), from_day, to_day, check_dimension(by, "--by"), parse_where(where))
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    elif as_csv:
        click.echo(render_csv(rep), nl=False)
    else:
        render_table(rep)


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
