"""halton-meter budget list|status|snooze: the [[budgets]] of config.toml and their spend."""

from __future__ import annotations

import json
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from ._ui import console, fail, safe


def _config(home: Path) -> Any:
    from hm_agent.config import ConfigError, load_config

    try:
        return load_config(home)
    except ConfigError as exc:
        fail(str(exc))


def budget_views(home: Path) -> tuple[list[dict[str, Any]], str]:
    """The budgets' state from the daemon (fresh), or from db.sqlite when it is down."""
    from hm_agent.budgets import offline_views
    from hm_agent.control import ControlError, DaemonNotRunning, control_call
    from hm_agent.home import paths

    cfg = _config(home)
    try:
        views = control_call(home, "budget.refresh", timeout=10.0).get("budgets")
        if isinstance(views, list):
            return views, "daemon"
    except (DaemonNotRunning, ControlError):
        pass
    try:
        return offline_views(paths(home).db, cfg.budgets), "database"
    except Exception as exc:  # sqlite3.Error and friends: one line, with the fix
        from hm_agent.store import StoreError, unreadable

        fail(str(exc) if isinstance(exc, StoreError) else unreadable(paths(home).db, exc))


def _state(view: dict[str, Any]) -> str:
    if view["blocking"]:
        return "[red]BLOCKING[/red]"
    if view["snoozed_until"]:
        return f"snoozed to {_local(view['snoozed_until'])}"
    if view["percent"] >= 100:
        return "[red]over limit[/red]"
    if view["fired"]:
        return f"[yellow]alerted {max(view['fired'])}%[/yellow]"
    return "[green]ok[/green]"


def _local(utc_text: str) -> str:
    return datetime.fromisoformat(utc_text.replace("Z", "+00:00")).astimezone().strftime("%H:%M")


def _money(text: str) -> str:
    from hm_agent.budgets import money

    return money(Decimal(text))


def _scope(scope: dict[str, str]) -> str:
    return safe(", ".join(f"{k}={v}" for k, v in scope.items()) or "all")


@click.group()
def budget() -> None:
    """Local budgets ([[budgets]] in config.toml): spend, alerts, blocks.

    \b
    Examples:
      halton-meter budget list
      halton-meter budget status --json
      halton-meter budget snooze team-daily 1h
    """


@budget.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(as_json: bool) -> None:
    """The budgets configured in config.toml."""
    from hm_agent.home import home_dir

    cfg = _config(home_dir())
    rows = [{"name": b.name, "scope": b.scope_dict(), "period": b.period, "limit_usd": format(b.limit_usd, "f"),
             "thresholds": list(b.thresholds), "action": b.action} for b in cfg.budgets]
    if as_json:
        click.echo(json.dumps({"budgets": rows}, indent=2))
        return
    if not rows:
        click.echo(f"No budgets. Add one to {cfg.path}, e.g.:\n\n[[budgets]]\nname = \"monthly\"\n"
                   f"period = \"month\"\nlimit_usd = 100\n\n(docs/budgets.md has more examples.)")
        return
    from rich import box
    from rich.table import Table

    table = Table(title="Budgets", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for col in ("name", "scope", "period", "limit", "thresholds", "action"):
        table.add_column(col, justify="right" if col == "limit" else "left")
    for r in rows:
        table.add_row(r["name"], _scope(r["scope"]), r["period"], _money(r["limit_usd"]),
                      ", ".join(f"{t}%" for t in r["thresholds"]), r["action"])
    console().print(table)


@budget.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/budgets.md).")
def status(as_json: bool) -> None:
    """Spend of each budget in its current period, alerts fired, blocks."""
    from hm_agent.home import home_dir

    views, source = budget_views(home_dir())
    if as_json:
        click.echo(json.dumps({"source": source, "budgets": views}, indent=2))
        return
    if not views:
        click.echo("No budgets configured (see `halton-meter budget list`).")
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"Budgets (from the {source})", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for col in ("name", "period", "spend", "limit", "used", "unpriced", "state"):
        table.add_column(col, justify="right" if col in ("spend", "limit", "used", "unpriced") else "left",
                         no_wrap=True)
    for v in views:
        table.add_row(v["name"], str(v["period_key"]), _money(v["spend_usd"]), _money(v["limit_usd"]),
                      f"{v['percent']:.1f}%", str(v["unpriced_calls"]) if v["unpriced_calls"] else "-",
                      _state(v))
    out = console()
    out.print(table)
    if any(v["unpriced_calls"] for v in views):
        out.print("[yellow]![/yellow] unpriced: calls whose price is unknown, not in the spend (never counted "
                  f"as $0); price them with {safe('[[pricing.override]]')} in config.toml.")


@budget.command("snooze")
@click.argument("name")
@click.argument("duration")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def snooze(name: str, duration: str, as_json: bool) -> None:
    """Lift a block budget's block for DURATION (30m, 1h, 2d; `off` ends a snooze).

    \b
    Examples:
      halton-meter budget snooze team-daily 1h
      halton-meter budget snooze team-daily off
    """
    from hm_agent.budgets import parse_duration
    from hm_agent.control import ControlError, DaemonNotRunning, control_call
    from hm_agent.home import home_dir, paths
    from hm_agent.store import Store, StoreError

    home = home_dir()
    cfg = _config(home)
    names = [b.name for b in cfg.budgets]
    if name not in names:
        known = ", ".join(names) or "none"
        fail(f"no budget named {name!r} in {cfg.path} (budgets: {known})")
    until: float | None = None
    if duration.strip().lower() not in ("off", "0"):
        try:
            until = time.time() + parse_duration(duration)
        except ValueError as exc:
            fail(str(exc))
    hp = paths(home)
    try:
        hp.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with Store(hp.db) as store:
            store.set_budget_snooze(name, until)
    except (StoreError, Exception) as exc:
        fail(f"cannot write {hp.db}: {exc}")
    try:
        control_call(home, "budget.refresh", timeout=10.0)
        applied = True
    except (DaemonNotRunning, ControlError):
        applied = False  # the daemon reads it when it starts
    when = None if until is None else datetime.fromtimestamp(until).astimezone().isoformat(timespec="seconds")
    if as_json:
        click.echo(json.dumps({"budget": name, "snoozed_until": when, "applied": applied}, indent=2))
    elif until is None:
        click.echo(f"budget {name}: snooze ended; its block (if it is over its limit) applies again.")
    else:
        click.echo(f"budget {name}: snoozed until {when[:16].replace('T', ' ') if when else ''}; calls in its "
                   f"scope pass until then. End it early: halton-meter budget snooze {name} off")
