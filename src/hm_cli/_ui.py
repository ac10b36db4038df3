"""Small output helpers shared by the commands (rich is imported lazily)."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr, no traceback."""
    click.echo(f"halton-meter: error: {message}", err=True)
    raise SystemExit(code)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def dot(ok: bool | None) -> str:
    """The status dot: green when healthy, red when not, dim when not applicable."""
    if ok is None:
        return "[dim]●[/dim]"
    return "[green]●[/green]" if ok else "[red]●[/red]"


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def is_tty() -> bool:
    return sys.stdout.isatty()
