"""status: is the daemon healthy, where is the proxy, what has been captured.

This is the command people run most: it must answer in well under 150 ms.
Keep imports here to the control client, home and config (no mitmproxy, no
capture, no price library, no anyio).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ._ui import clean, fmt_duration


def offline_status(home: Path, reason: str) -> dict[str, Any]:
    """The status shape when no daemon answers, from the files alone."""
    from hm_agent.config import ConfigError, load_config
    from hm_agent.home import HomeError, paths, read_machine_id

    hp = paths(home)
    problems = [reason]
    warnings: list[str] = []
    host, port, cloud_enabled = "127.0.0.1", 8090, False
    retention_days: int | None = None
    budgets: list[Any] = []
    try:
        cfg = load_config(hp)
        budgets = cfg.budgets
        host, port, cloud_enabled = cfg.listen_host, cfg.listen_port, cfg.cloud_enabled
        retention_days = cfg.retention_days
        warnings = list(cfg.warnings)
    except ConfigError as exc:
        problems.append(str(exc))
    except Exception as exc:  # whatever is in the file, status answers
        problems.append(f"cannot read {hp.config}: {exc}. Fix it, or move it away to get the defaults")
    try:
        machine_id = read_machine_id(hp)
    except HomeError as exc:
        machine_id = None
        problems.append(str(exc))
    except Exception as exc:
        machine_id = None
        problems.append(f"cannot read {hp.machine}: {exc}")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    rows_today: int | None = 0
    if hp.db.exists():
        import sqlite3

        try:
            conn = sqlite3.connect(f"file:{hp.db}?mode=ro", uri=True)
            try:
                rows_today = int(conn.execute("SELECT count(*) FROM requests WHERE day = ?", (today,)).fetchone()[0])
            finally:
                conn.close()
        except Exception as exc:  # sqlite3.Error, a damaged file, a directory in its place…
            from hm_agent.store import unreadable

            rows_today = None
            problems.append(unreadable(hp.db, exc))
    return {
        "version": _version(),
        "home": str(hp.home),
        "daemon": {
            "running": False, "healthy": False, "pid": None, "backend": None,
            "started_at": None, "uptime_s": None, "problems": problems,
        },
        "proxy": {"bound": False, "host": host, "port": port},
        "rows": {"day": today, "today": rows_today, "pending": 0, "written": 0, "dropped": 0, "quarantined": 0},
        "database": {**_database_facts(hp.db), "retention_days": retention_days},
        "ca_cert": str(hp.ca_cert),
        "machine_id": machine_id,
        "cloud": {"state": "NOT-CONFIGURED", "enabled": False} if not cloud_enabled
        else _offline_cloud(hp.home),
        "components": {},
        "config_warnings": warnings,
        "budgets": _offline_budgets(hp.db, budgets, problems),
    }


def _database_facts(db: Path) -> dict[str, Any]:
    from hm_agent.retention import database_facts

    return database_facts(db)


def _offline_budgets(db: Path, budgets: list[Any], problems: list[str]) -> list[dict[str, Any]]:
    if not budgets:
        return []
    from hm_agent.budgets import offline_views

    try:
        return offline_views(db, budgets, count=False)  # counting a month of rows is not for status
    except Exception as exc:  # a broken db is reported once above; keep status alive
        problems.append(f"cannot count budget spend: {exc}")
        return []


def _offline_cloud(home: Path) -> dict[str, Any]:
    """Paired but no daemon: PAUSED as stored, else DEGRADED (nothing uploads)."""
    from hm_agent.cloudstatus import offline_status

    try:
        snap = offline_status(home)
    except Exception as exc:  # a broken db or config is reported above; keep status alive
        return {"state": "DEGRADED", "enabled": True, "detail": f"cannot read the cloud state: {exc}"}
    return {"state": snap["state"], "enabled": True, "paused_reason": snap.get("paused_reason"),
            "detail": snap.get("hint")}


def _version() -> str:
    from hm_agent import __version__

    return __version__


def collect_status(home: Path) -> dict[str, Any]:
    from hm_agent.control import ControlError, DaemonNotRunning, control_call

    try:
        return control_call(home, "status", timeout=5.0)
    except DaemonNotRunning:
        return offline_status(home, "the daemon is not running: start it with `halton-meter start`")
    except ControlError as exc:
        return offline_status(home, f"the daemon does not answer: {exc}")
    except Exception as exc:  # e.g. an answer that is not the status shape: still answer with it
        return offline_status(home, f"cannot read the daemon's status: {exc}; see `halton-meter doctor`")


def _dot(ok: bool) -> str:
    return click.style("●", fg="green" if ok else "red")


def _dim(text: str) -> str:
    return click.style(text, dim=True)


def render(st: dict[str, Any]) -> None:
    # click.style rather than rich here: importing rich.console alone costs ~25 ms,
    # a sixth of the status budget.
    echo = click.echo
    d, p = st["daemon"], st["proxy"]
    if d["running"]:
        up = fmt_duration(d["uptime_s"] or 0)
        state = "healthy" if d["healthy"] else "running with problems"
        facts = _dim(clean(f"(pid {d['pid']}, {d['backend']}, up {up})"))
        echo(f"{_dot(d['healthy'])} daemon  {state} {facts}")
    else:
        echo(f"{_dot(False)} daemon  not running")
    where = clean(f"{p['host']}:{p['port']}")
    if p["bound"]:
        echo(f"{_dot(True)} mitm bound on {where}")
    else:
        echo(f"{_dot(False)} mitm not bound " + _dim(f"(configured: {where})"))
    rows = st["rows"]
    today = "?" if rows["today"] is None else str(rows["today"])
    extra = ""
    if rows.get("pending"):
        extra += f", {rows['pending']} waiting to be written"
    if rows.get("dropped"):
        extra += f", {rows['dropped']} dropped"
    if rows.get("quarantined"):
        extra += f", {rows['quarantined']} refused by the database (kept in write_quarantine)"
    day_note = _dim(clean(f"({rows['day']} UTC){extra}"))
    echo(f"  rows today   {today} {day_note}")
    db = st.get("database")
    if isinstance(db, dict):
        echo(f"  database     {fmt_bytes(int(db.get('bytes') or 0))} " + _dim(clean(_db_note(db))))
    echo(f"  CA           {clean(st['ca_cert'])}")
    cloud = st["cloud"]
    state = clean(cloud["state"])
    colour = {"ACTIVE": "green", "DEGRADED": "yellow", "PAUSED": "yellow"}.get(state, "red")
    styled = _dim(state) if state == "NOT-CONFIGURED" else click.style(state, fg=colour)
    line = f"  cloud        {styled}"
    worker = cloud.get("worker")
    detail = worker.get("detail") if isinstance(worker, dict) else None
    reason = detail.get("paused_reason") if isinstance(detail, dict) else cloud.get("paused_reason")
    if reason:
        from hm_agent.cloudstatus import explain_paused

        line += " " + _dim(clean(f"({explain_paused(str(reason))})"))
    echo(line)
    for b in st.get("budgets") or []:
        render_budget(b)
    from .limits import describe

    shown = st.get("ratelimits") or []
    for entry in shown[:5]:
        echo(f"  rate limit   {clean(entry['host'])} {clean(entry['model'])}: {clean(describe(entry))} "
             + _dim(clean(f"(at {entry['at']})")))
    if len(shown) > 5:
        echo("  rate limit   " + _dim(f"… {len(shown) - 5} more: halton-meter report --limits"))
    for name, comp in (st.get("components") or {}).items():
        if comp.get("state") == "crashed":
            echo(f"{_dot(False)} {clean(name)} worker crashed: {clean(comp.get('error'))} "
                 f"{_dim('(restarts on the next tick)')}")
    for problem in d.get("problems") or []:
        echo(f"  {click.style('!', fg='red')} {clean(problem)}")
    for warning in st.get("config_warnings") or []:
        echo(f"  {click.style('!', fg='yellow')} {clean(warning)}")


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _db_note(db: dict[str, Any]) -> str:
    oldest = db.get("oldest")
    parts = [f"oldest row {str(oldest)[:10]}" if oldest else "no rows yet"]
    days = db.get("retention_days")
    parts.append(f"keeping {days} days" if days else "keeping everything")
    return "(" + ", ".join(parts) + ")"


def render_budget(b: dict[str, Any]) -> None:
    """One line per budget: spend of the period against the limit, and what fired."""
    state = ""
    if b.get("blocking"):
        state = " " + click.style("BLOCKING", fg="red")
    elif b.get("snoozed_until"):
        state = " " + _dim(f"(block snoozed until {b['snoozed_until']})")
    elif (b.get("percent") or 0) >= 100:
        state = " " + click.style("over limit", fg="red")
    elif b.get("fired"):
        state = " " + click.style(f"alerted at {max(b['fired'])}%", fg="yellow")
    from decimal import Decimal

    from hm_agent.budgets import money

    if b.get("spend_usd") is None:  # the daemon is down: status does not count a month of rows
        click.echo(f"  budget       {b['name']} {money(Decimal(b['limit_usd']))} a {b['period']} "
                   + _dim("(spend: halton-meter budget status)"))
        return
    unknown = f", {b['unpriced_calls']} unpriced" if b.get("unpriced_calls") else ""
    facts = _dim(f"({b['period']} {b['period_key']}{unknown})")
    click.echo(f"  budget       {b['name']} {money(Decimal(b['spend_usd']))} of {money(Decimal(b['limit_usd']))}"
               f" = {b['percent']:.1f}%{state} {facts}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable shape (docs/daemon.md).")
def status(as_json: bool) -> None:
    """Show whether the daemon is healthy, where the proxy listens, and rows captured today.

    Works when the daemon is down. Exit code 0 when healthy, 1 otherwise.

    \b
    Examples:
      halton-meter status
      halton-meter status --json | jq .proxy
    """
    from hm_agent.home import home_dir

    st = collect_status(home_dir())
    from hm_agent.home import paths

    from .limits import read_limits

    st["ratelimits"] = read_limits(paths(home_dir()).db, limit=20)
    if as_json:
        click.echo(json.dumps(st, indent=2, sort_keys=True))
    else:
        render(st)
    raise SystemExit(0 if st["daemon"]["healthy"] else 1)
