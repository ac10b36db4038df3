"""Printing helpers of the `cloud` commands: the page's ● bullets, spinners, relative times."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from hm_cli._ui import console as _console
from hm_cli._ui import fail, safe

__all__ = ["SyncProgress", "bullet", "console", "fail", "relative_time", "safe", "spinner"]

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


class SyncProgress:
    """The upload of a backlog: a rich bar (rows, rows/s, time left) on a terminal, and
    on a pipe a plain line every few seconds. ``update`` takes the rows still unsynced
    (new rows captured meanwhile raise the total rather than the bar going back)."""

    PLAIN_EVERY_S = 2.0

    def __init__(self, total: int, reconcile: bool = False) -> None:
        self.total = max(total, 0)
        self.reconcile = reconcile
        self.done = 0
        self.started = time.monotonic()
        self._last_plain = self.started
        self._progress: Any = None
        self._task: Any = None
        self._said_reconcile = False

    def __enter__(self) -> SyncProgress:
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            def average(task: Any) -> float | None:
                """Rows/s over the whole upload: rich's own estimate needs several updates in
                its window, and batches in flight together answer in a burst."""
                speed = task.finished_speed or task.speed
                if speed is None and task.completed and task.elapsed:
                    speed = task.completed / task.elapsed
                return float(speed) if speed else None

            class RowsPerSecond(TransferSpeedColumn):
                def render(self, task: Any) -> Any:
                    from rich.text import Text

                    speed = average(task)
                    return Text("? rows/s" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")

            class RowsRemaining(TimeRemainingColumn):
                def render(self, task: Any) -> Any:
                    from rich.text import Text

                    speed = average(task)
                    if task.total is None or not speed:
                        return super().render(task)
                    left = max(0, int((task.total - task.completed) / speed + 0.5))
                    return Text(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", style="progress.remaining")

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                RowsPerSecond(), TextColumn("ETA"), RowsRemaining(), console=console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("Uploading", total=self.total or None)
        else:
            console.print(f"… Uploading {self.total:,} unsynced rows" if self.total else "… Uploading unsynced rows")
        return self

    def update(self, unsynced: int, now: float) -> None:
        done = max(self.done, self.total - unsynced)
        if unsynced > self.total - done:  # rows captured meanwhile
            self.total = done + unsynced
        self.done = done
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, total=self.total or None)
            if self.reconcile and self.done >= self.total:
                self._progress.update(self._task, description="Reconciling daily totals")
            return
        if self.reconcile and self.done >= self.total and not self._said_reconcile:
            self._said_reconcile = True
            console.print("… comparing daily totals with the cloud (reconcile)")
        elif now - self._last_plain >= self.PLAIN_EVERY_S and self.total and self.done < self.total:
            self._last_plain = now
            console.print(self.line(now))

    def line(self, now: float) -> str:
        """'… 1,200/5,000 rows uploaded (400 rows/s, about 10 s left)'."""
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = f"about {_short(left / rate)} left" if rate > 0 and left > 0 else "finishing"
        return f"… {self.done:,}/{self.total:,} rows uploaded ({rate:,.0f} rows/s, {eta})"

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _short(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"
