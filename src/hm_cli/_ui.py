"""Small output helpers shared by the commands (rich is imported lazily)."""

from __future__ import annotations

import re
import sys
from typing import Any, NoReturn

import click

# Characters that would act on the terminal instead of being shown: C0 controls
# (ESC starts a terminal escape, CR rewrites the line), DEL, C1 controls (8-bit
# CSI), and the Unicode bidirectional overrides and isolates (text that reads
# differently from what it is).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_SHOWN = 500  # characters of one outside string shown; the rest is cut with "…"


def clean(value: object, limit: int = MAX_SHOWN, *, newlines: bool = False) -> str:
    """A string from outside (model, host, server message…) made safe for a plain terminal line.

    Tabs and line breaks become spaces (``newlines=True`` keeps ``\\n``, for
    messages of several lines), other control characters are removed, and the
    result is cut to ``limit`` characters.
    """
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"

    def replace(m: re.Match[str]) -> str:
        char = m.group()
        if char == "\n" and newlines:
            return char
        return " " if char in "\t\n\r" else ""

    return _CONTROL.sub(replace, text)


def csv_cell(value: object) -> object:
    """A CSV cell: strings :func:`clean`, then made text a spreadsheet never runs as a formula
    (hm_charts.cells: models, projects and tags come from outside)."""
    if not isinstance(value, str):
        return value
    from hm_charts.cells import spreadsheet_safe

    return spreadsheet_safe(clean(value, 10_000))


def safe(value: object, limit: int = MAX_SHOWN) -> str:
    """:func:`clean`, then rich markup escaped: for every outside string printed through rich."""
    from rich.markup import escape

    return escape(clean(value, limit))


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr, no traceback (control characters of outside text removed)."""
    click.echo(f"halton-meter: error: {clean(message, 4000, newlines=True)}", err=True)
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


def has_display() -> bool:
    """False on a Linux machine without X11 or Wayland (a server, CI, ssh)."""
    import os

    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url: str) -> bool:
    """Open ``url`` in a browser without ever blocking a headless machine; False when there is none."""
    if not has_display():
        return False
    import threading

    def _open() -> None:
        try:
            import webbrowser

            webbrowser.open(url, new=2)
        except Exception:
            pass

    threading.Thread(target=_open, daemon=True).start()
    return True
