"""Every row the writer commits, handed once to the daemon's listeners.

Budgets (``hm_agent.budgets``), the Prometheus metrics (``hm_agent.metrics``)
and the OpenTelemetry exporter (``hm_agent.otel``) each need the rows as
they are written. Rather than each of them hooking the writer, the writer
calls :meth:`RowFeed.poll` after each committed batch, and the feed reads
the rows inserted since its watermark (the SQLite rowid) with one query and
gives them to every listener. Listeners run on the writer thread, never on
the proxy thread; a listener that raises is logged and skipped.

The watermark makes it exactly-once: a listener that recounts from the
database (a budget whose period rolled over) passes ``watermark`` as the
upper bound, so no row is counted twice, whoever calls ``poll`` (the writer,
or the periodic tick that rolls periods over on an idle daemon).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

from .store import Store

log = logging.getLogger("hm_agent.rowfeed")

BATCH = 5000


class RowListener(Protocol):
    def on_rows(self, store: Store, rows: list[dict[str, Any]], watermark: int) -> None: ...


class RowFeed:
    def __init__(self, db_path: Path) -> None:
        self._store = Store(db_path, busy_timeout_ms=2000)
        self._lock = threading.Lock()
        self.listeners: list[RowListener] = []
        # Rows already in the database when the daemon starts are history: listeners
        # that need them (budgets) read them from the store themselves.
        self.watermark = self._store.max_rowid()
        self.errors = 0

    def poll(self) -> int:
        """Hand rows written since the last poll to every listener; returns how many."""
        with self._lock:
            if self._store.max_rowid() < self.watermark:
                # Retention deleted every row, newest included: SQLite then numbers new
                # rows from 1 again, so every row there now came after the watermark.
                self.watermark = 0
            found = self._store.rows_after(self.watermark, BATCH)
            total = len(found)
            while True:
                rows = [row for _, row in found]
                if found:
                    self.watermark = found[-1][0]
                for listener in list(self.listeners):
                    try:
                        listener.on_rows(self._store, rows, self.watermark)
                    except Exception:
                        self.errors += 1
                        log.exception("row listener %s failed", type(listener).__name__)
                if len(found) < BATCH:
                    return total
                found = self._store.rows_after(self.watermark, BATCH)
                total += len(found)

    def close(self) -> None:
        with self._lock:
            self._store.close()
