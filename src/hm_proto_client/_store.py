"""Where a driver keeps rows: the ``RowStore`` protocol and a small SQLite one.

The upload loop (``run_sync`` / ``run_sync_async``) needs only the six
methods of :class:`RowStore`. :class:`SQLiteRowStore` implements them on one
SQLite file (stdlib ``sqlite3``), enough for a gateway or a script; a
product with its own database implements the protocol there instead. A row
becomes synced only when ``mark_synced`` is called, which the loop does only
after the backend's 200 named its batch (ack-then-commit).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from hm_proto import DayTotal, EncodedRow, UsageRow


class RowStore(Protocol):
    def unsynced(self, limit: int) -> Sequence[EncodedRow]:
        """Up to ``limit`` oldest rows neither synced nor quarantined, as (id, json)."""
        ...

    def count_unsynced(self) -> int: ...

    def mark_synced(self, row_ids: Sequence[str]) -> None: ...

    def quarantine(self, row_ids: Sequence[str], detail: str) -> None:
        """These rows will never be sent (kept locally, skipped by ``unsynced``)."""
        ...

    def totals_by_day(self, from_date: str, to_date: str) -> Mapping[str, DayTotal]:
        """Per UTC day: (row count, summed cost as a decimal string or None)."""
        ...

    def resend_days(self, days: Sequence[str]) -> int:
        """Mark these days' rows unsynced again (reconcile); returns how many."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_rows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    day TEXT NOT NULL,
    cost_usd TEXT,
    row_json BLOB NOT NULL,
    synced INTEGER NOT NULL DEFAULT 0,
    quarantined TEXT
);
CREATE INDEX IF NOT EXISTS usage_rows_pending ON usage_rows (synced, quarantined, seq);
"""


class SQLiteRowStore:
    """A :class:`RowStore` in one SQLite file (``":memory:"`` for tests). Thread-safe."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, row: UsageRow) -> bool:
        """Keep a captured row (once: a known id is ignored). True if it was new."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO usage_rows (id, day, cost_usd, row_json) VALUES (?, ?, ?, ?)",
                (row.id, row.day, row.cost_usd, row.to_json()),
            )
            return cursor.rowcount == 1

    def unsynced(self, limit: int) -> list[EncodedRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, row_json FROM usage_rows WHERE synced = 0 AND quarantined IS NULL"
                " ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [(row_id, bytes(row_json)) for row_id, row_json in rows]

    def count_unsynced(self) -> int:
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM usage_rows WHERE synced = 0 AND quarantined IS NULL"
            ).fetchone()
        return int(count)

    def count_synced(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM usage_rows WHERE synced = 1").fetchone()
        return int(count)

    def mark_synced(self, row_ids: Sequence[str]) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE usage_rows SET synced = 1 WHERE id = ?", [(i,) for i in row_ids]
            )

    def quarantine(self, row_ids: Sequence[str], detail: str) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE usage_rows SET quarantined = ? WHERE id = ?",
                [(detail or "refused", i) for i in row_ids],
            )

    def totals_by_day(self, from_date: str, to_date: str) -> dict[str, DayTotal]:
        with self._lock:
            rows = self._db.execute(
                "SELECT day, cost_usd FROM usage_rows WHERE day BETWEEN ? AND ?",
                (from_date, to_date),
            ).fetchall()
        counts: dict[str, int] = {}
        costs: dict[str, Decimal] = {}
        for day, cost in rows:
            counts[day] = counts.get(day, 0) + 1
            if cost is not None:
                costs[day] = costs.get(day, Decimal(0)) + Decimal(cost)
        return {day: (n, str(costs[day]) if day in costs else None) for day, n in counts.items()}

    def resend_days(self, days: Sequence[str]) -> int:
        with self._lock:
            total = 0
            for day in days:
                total += self._db.execute(
                    "UPDATE usage_rows SET synced = 0 WHERE day = ? AND quarantined IS NULL",
                    (day,),
                ).rowcount
        return total
