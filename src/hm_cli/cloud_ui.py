"""Printing helpers of the `cloud` commands: the page's ● bullets, spinners, relative times."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from hm_cli._ui import console as _console
from hm_cli._ui import fail, safe

__all__ = ["bullet", "console", "fail", "relative_time", "safe", "spinner"]

console = _console()


def bullet(text: str, *, ok: bool = False, colour: str | None = None) -> None:
    colour = colour or ("green" if ok else "cyan")
    console.print(f"[{colour}]●[/] {text}")


@contextmanager
def spinner(text: str) -> Iterator[None]:
    """A spinner on a terminal; a plain line when output is piped (CI, scripts)."""
    if console.is_terminal:
        with console.status(text, spinner="dots"):
            yield
    else:
        console.print(f"… {text}")
        yield


def relative_time(ts: str | float | None, now: float | None = None) -> str:
    """'3s ago', '5m ago', '2h ago', '4d ago' or 'never'."""
    if ts is None or ts == "":
        return "never"
    if isinstance(ts, str):
        try:
            when = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return ts
    else:
        when = float(ts)
    secs = max(0, int((now if now is not None else time.time()) - when))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"
