"""The local store: ``db.sqlite`` (schema in docs/architecture.md).

One writer (the daemon's writer thread) inserts rows in short
``BEGIN IMMEDIATE`` transactions; readers (``report``, ``status``, the cloud
worker) open their own connections. WAL lets readers run beside the writer,
and a committed row survives ``kill -9`` of the daemon.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    day TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    host TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_write_tokens INTEGER,
    reasoning_tokens INTEGER,
    cost_usd TEXT,
    price_version TEXT NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttfb_ms INTEGER,
    flags TEXT NOT NULL DEFAULT '',
    row_json BLOB NOT NULL,
    synced_at TEXT
);
CREATE INDEX IF NOT EXISTS requests_unsynced ON requests(ts) WHERE synced_at IS NULL;
CREATE INDEX IF NOT EXISTS requests_day ON requests(day);
CREATE TABLE IF NOT EXISTS sync_quarantine (
    id TEXT PRIMARY KEY,
    status INTEGER,
    detail TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS write_quarantine (
    id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    row_json BLOB NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    workspace_id TEXT,
    workspace_slug TEXT,
    workspace_name TEXT,
    machine_id TEXT,
    hostname TEXT,
    api_key_ciphertext BLOB,
    paired_at TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    paused_reason TEXT,
    last_sync_at TEXT,
    last_reconcile_at TEXT,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS budget_alerts (
    budget TEXT NOT NULL,
    period TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    fired_at TEXT NOT NULL,
    alert_json TEXT NOT NULL,
    delivered_at TEXT,
    PRIMARY KEY (budget, period, threshold)
);
CREATE TABLE IF NOT EXISTS budget_snoozes (
    budget TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS request_bodies (
    id TEXT PRIMARY KEY,
    truncated INTEGER NOT NULL,
    ciphertext BLOB NOT NULL,
    synced_at TEXT
);
CREATE TABLE IF NOT EXISTS ratelimits (
    host TEXT NOT NULL,
    model TEXT NOT NULL,
    at TEXT NOT NULL,
    limits TEXT NOT NULL,
    PRIMARY KEY (host, model)
);
"""

ATTRIBUTION_COLUMNS = ("project", "repo", "branch", "program", "os_user", "tags")
"""Columns added by version 2; ``tags`` is a JSON object (text) or NULL."""

# -- local rollups (version 3): what `report` reads instead of every row ---------
#
# request_rollups holds, per day and distinct (provider, model, host, attribution)
# values, the sums `report` needs; a trigger keeps it in the same transaction as
# every insert into requests, so it can never disagree with the rows. Costs are
# summed exactly in integers: whole dollars, decimals 1-6 and 7-12 apart (no sum
# can overflow), plus the most decimals seen (a Decimal sum of the rows has that
# many places). A row these sums cannot hold exactly (a cost with more than 12
# decimals, text where a number belongs, a count past api.md's bounds: a damaged
# database) adds nothing but a count in ``unexact``; `report` then reads the rows
# of its range, as before.
ROLLUP_DIMENSIONS = ("provider", "model", "host", *ATTRIBUTION_COLUMNS)
ROLLUP_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
ROLLUP_SUMS = ("calls", "priced_calls", "error_calls", "usage_missing_calls", "unknown_price_calls",
               *ROLLUP_TOKENS, "cost_whole", "cost_micro", "cost_pico", "unexact")
_MAX_TOKENS = 10**12  # api.md's bound on a token count


def _rollup_values(r: str) -> dict[str, str]:
    """SQL for one row's contribution to its rollup; ``r`` names the row (NEW, requests)."""
    cost = f"{r}.cost_usd"
    dot = f"instr({cost} || '.', '.')"  # position of the decimal point, or past the end
    frac = f"substr({cost}, {dot} + 1)"
    exact_cost = (
        f"(typeof({cost}) = 'text' AND {cost} GLOB '[0-9]*' AND {cost} NOT GLOB '*[^0-9.]*'"
        f" AND {cost} NOT GLOB '*.*.*' AND {dot} <= 8 AND length({frac}) <= 12)"
    )
    digits = f"substr({frac} || '000000000000', 1, 12)"
    error = f"(typeof({r}.status) = 'integer' AND ({r}.status >= 400 OR {r}.status = 0))"
    missing = f"((' ' || coalesce({r}.flags, '') || ' ') GLOB '* usage_missing *')"
    exact_tokens = {t: f"(typeof({r}.{t}) = 'integer' AND {r}.{t} BETWEEN 0 AND {_MAX_TOKENS})"
                    for t in ROLLUP_TOKENS}
    unexact = " + ".join(
        [f"({cost} IS NOT NULL AND NOT {exact_cost})", f"(typeof({r}.status) != 'integer')"]
        + [f"({r}.{t} IS NOT NULL AND NOT {ok})" for t, ok in exact_tokens.items()]
        + [f"(typeof({r}.{d}) NOT IN ('text', 'null'))" for d in ROLLUP_DIMENSIONS]
        # Python's split() cuts flags at any whitespace: other characters go the slow way.
        + [f"(coalesce({r}.flags, '') GLOB '*[^ A-Za-z0-9_:.=-]*')"]
    )
    return {
        "day": f"{r}.day",
        # One text per distinct combination (quote() keeps NULL apart from 'NULL').
        "k": " || ',' || ".join(f"quote({r}.{d})" for d in ROLLUP_DIMENSIONS),
        **{d: f"{r}.{d}" for d in ROLLUP_DIMENSIONS},
        # As hm_cli.report.Group.add: an unpriced call is an error, a call without usage,
        # or a model without a price, exactly one of them.
        "calls": "1",
        "priced_calls": f"({cost} IS NOT NULL)",
        "error_calls": error,
        "usage_missing_calls": f"({cost} IS NULL AND NOT {error} AND {missing})",
        "unknown_price_calls": f"({cost} IS NULL AND NOT {error} AND NOT {missing})",
        **{t: f"(CASE WHEN {ok} THEN {r}.{t} ELSE 0 END)" for t, ok in exact_tokens.items()},
        "cost_whole": f"(CASE WHEN {exact_cost} THEN CAST(substr({cost}, 1, {dot} - 1) AS INTEGER) ELSE 0 END)",
        "cost_micro": f"(CASE WHEN {exact_cost} THEN CAST(substr({digits}, 1, 6) AS INTEGER) ELSE 0 END)",
        "cost_pico": f"(CASE WHEN {exact_cost} THEN CAST(substr({digits}, 7, 6) AS INTEGER) ELSE 0 END)",
        "cost_decimals": f"(CASE WHEN {exact_cost} THEN length({frac}) ELSE 0 END)",
        "unexact": f"({unexact})",
    }


def _upsert(values: dict[str, str], select: str = "") -> str:
    """Add ``values`` (a row's or a group's contribution) to its rollup."""
    updates = ", ".join(
        [f"{c} = {c} + excluded.{c}" for c in ROLLUP_SUMS]
        + ["cost_decimals = max(cost_decimals, excluded.cost_decimals)"]
    )
    source = select or f"VALUES ({', '.join(values.values())})"
    return f"INSERT INTO request_rollups ({', '.join(values)}) {source} ON CONFLICT (day, k) DO UPDATE SET {updates}"


def _counted(rowid: str) -> str:
    """Whether a row is in the rollups: filled already, or written since the upgrade."""
    return f"(SELECT {rowid} <= done OR {rowid} > upto FROM rollup_fill)"


def _fill_statement() -> str:
    """Rows ``rowid > ? AND rowid <= ?`` (not in the rollups yet) added, a group at a time."""
    names = list(_rollup_values("r"))
    per_row = ", ".join(f"{sql} AS {name}" for name, sql in _rollup_values("requests").items() if name != "k")
    # Grouped by the columns themselves (NULLs group together; k is made once a group).
    grouped = ", ".join(
        _rollup_values("r")["k"] if c == "k" else f"sum({c})" if c in ROLLUP_SUMS
        else "max(cost_decimals)" if c == "cost_decimals" else c
        for c in names
    )
    select = (f"SELECT {grouped} FROM (SELECT {per_row} FROM requests WHERE rowid > ? AND rowid <= ?) AS r"
              f" WHERE true GROUP BY day, {', '.join(ROLLUP_DIMENSIONS)}")
    return _upsert(dict.fromkeys(names, ""), select)


_FILL_ROLLUPS = _fill_statement()


def _rollup_statements() -> tuple[str, ...]:
    new = _rollup_values("NEW")
    # An update (report --reprice) takes the old row out and puts the new one in. A
    # rollup keeps the most decimals it ever saw: a cost that loses places leaves it
    # padding the sum with zeros (same value).
    old = {c: f"-({sql})" if c in ROLLUP_SUMS else "0" if c == "cost_decimals" else sql
           for c, sql in _rollup_values("OLD").items()}
    watched = ", ".join(["day", "status", "flags", "cost_usd", *ROLLUP_TOKENS, *ROLLUP_DIMENSIONS])
    return (
        "CREATE TABLE request_rollups (day TEXT NOT NULL, k TEXT NOT NULL, "
        + ", ".join(ROLLUP_DIMENSIONS)
        + ", " + ", ".join(f"{c} INTEGER NOT NULL" for c in ROLLUP_SUMS)
        + ", cost_decimals INTEGER NOT NULL, PRIMARY KEY (day, k)) WITHOUT ROWID",
        # The rows already there are added after the upgrade, a chunk at a time
        # (Store.fill_rollups, driven by the daemon's rollups component), so opening a
        # big store stays quick; until then `report` reads the rows.
        "CREATE TABLE rollup_fill (id INTEGER PRIMARY KEY CHECK (id = 1), done INTEGER NOT NULL,"
        " upto INTEGER NOT NULL)",
        "INSERT INTO rollup_fill VALUES (1, 0, (SELECT coalesce(max(rowid), 0) FROM requests))",
        f"CREATE TRIGGER requests_rollup AFTER INSERT ON requests WHEN {_counted('NEW.rowid')}"
        f" BEGIN {_upsert(new)}; END",
        f"CREATE TRIGGER requests_rollup_update AFTER UPDATE OF {watched} ON requests"
        f" WHEN {_counted('OLD.rowid')} BEGIN {_upsert(old)}; {_upsert(new)}; END",
        f"CREATE TRIGGER requests_rollup_delete AFTER DELETE ON requests WHEN {_counted('OLD.rowid')}"
        f" BEGIN {_upsert(old)}; END",
    )


INCREMENTAL_VACUUM = "PRAGMA auto_vacuum = INCREMENTAL; VACUUM"
"""The schema 4 step: the file is to have auto_vacuum = INCREMENTAL. The migration only
records the version; the one VACUUM that switches an older file (it rewrites it whole,
about 15 s per million rows, holding the write lock) is run later, in the background, by
:meth:`Store.switch_to_incremental_vacuum` (the retention component), not at open."""

# In-place upgrades, oldest first: (user_version after the step, SQL:
# statements separated by ';', or a tuple of statements). A database
# is brought to the last version at open (read-write), one transaction per step;
# the _SCHEMA above is version 1 and never changes (new tables may be added to it
# with IF NOT EXISTS, new columns only here). Append steps; never edit old ones.
MIGRATIONS: tuple[tuple[int, str | tuple[str, ...]], ...] = (
    (2, """
ALTER TABLE requests ADD COLUMN project TEXT;
ALTER TABLE requests ADD COLUMN repo TEXT;
ALTER TABLE requests ADD COLUMN branch TEXT;
ALTER TABLE requests ADD COLUMN program TEXT;
ALTER TABLE requests ADD COLUMN os_user TEXT;
ALTER TABLE requests ADD COLUMN tags TEXT;
"""),
    (3, _rollup_statements()),
    # Space freed by retention goes back to the file system a few pages at a time
    # (PRAGMA incremental_vacuum). New databases are created so; an older one needs
    # one VACUUM to switch, run in the background by retention (see INCREMENTAL_VACUUM).
    (4, INCREMENTAL_VACUUM),
)
SCHEMA_VERSION = MIGRATIONS[-1][0] if MIGRATIONS else 1

CLOUD_STATE_FIELDS = (
    "workspace_id", "workspace_slug", "workspace_name", "machine_id", "hostname",
    "api_key_ciphertext", "paired_at", "paused", "paused_reason", "last_sync_at",
    "last_reconcile_at", "last_error",
)

_ROW_COLUMNS = (
    "id", "ts", "day", "provider", "model", "host", "endpoint", "status", "stream",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost_usd", "price_version", "latency_ms", "ttfb_ms", "flags", "row_json",
    *ATTRIBUTION_COLUMNS,
)
_INSERT = (
    f"INSERT OR IGNORE INTO requests ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)})"
)


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def unreadable(path: Path, exc: BaseException, verb: str = "read") -> str:
    """One line for a database that cannot be used, with what to do about it."""
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return (
        f"cannot {verb} {path}: {detail}. If it is damaged: `halton-meter stop`, move it away "
        f"(mv {path} {path}.damaged), then `halton-meter start` creates a new one"
    )


_IN_CHUNK = 500  # ids per IN (...) list: well under any SQLite's variable limit


class StoreError(Exception):
    """The database cannot be opened or is damaged; the message says what to do."""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One captured call as it goes into ``requests`` (built by the writer thread)."""

    id: str
    ts: str
    provider: str
    model: str
    host: str
    endpoint: str
    status: int
    stream: bool
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: str | None
    price_version: str
    latency_ms: int
    ttfb_ms: int | None
    flags: str
    row_json: bytes
    # Attribution (all of it, whatever [attribution] sync_* says: the local report sees it all).
    project: str | None = None
    repo: str | None = None
    branch: str | None = None
    program: str | None = None
    os_user: str | None = None
    tags: str | None = None  # JSON object text

    def values(self) -> tuple[Any, ...]:
        return (
            self.id, self.ts, self.ts[:10], self.provider, self.model, self.host, self.endpoint,
            self.status, int(self.stream), self.input_tokens, self.output_tokens,
            self.cache_read_tokens, self.cache_write_tokens, self.reasoning_tokens,
            self.cost_usd, self.price_version, self.latency_ms, self.ttfb_ms, self.flags,
            self.row_json, self.project, self.repo, self.branch, self.program, self.os_user,
            self.tags,
        )


def _create_private_file(path: Path) -> None:
    # SQLite gives the -wal and -shm files the main file's mode: 0600 here covers all three.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.close(fd)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``conn`` inside one BEGIN IMMEDIATE … COMMIT (ROLLBACK on any error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database to SCHEMA_VERSION, one step per transaction (safe to race).

    A database already there takes no lock: opening it while another connection holds
    the write lock for long (the background VACUUM) does not wait for it."""
    if MIGRATIONS and int(conn.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION:
        return
    for version, script in MIGRATIONS:
        with _immediate(conn):
            found = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} was written by a newer halton-meter (schema {found}, this one knows "
                    f"{SCHEMA_VERSION}): upgrade halton-meter, or move the file away to start a new one."
                )
            if found < version:
                statements = () if script == INCREMENTAL_VACUUM else (
                    script.split(";") if isinstance(script, str) else script)
                for statement in statements:
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
    if not MIGRATIONS:
        conn.execute("PRAGMA user_version = 1")


class Store:
    """A connection to db.sqlite. Thread-safe (one lock); open one per thread for concurrency."""

    def __init__(self, path: Path, *, readonly: bool = False, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._interrupted = False
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                if not self.path.exists():
                    _create_private_file(self.path)
                self._conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            # Text that is not UTF-8 (a damaged page, another program's write) reads as
            # U+FFFD instead of failing every query that touches its row.
            self._conn.text_factory = _lenient_text
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode: a commit survives a crash of the process (not of the OS).
                self._conn.execute("PRAGMA synchronous = NORMAL")
                # Takes effect only in a file without tables yet (a new one); older files
                # switch at the schema 4 upgrade.
                self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self._conn.executescript(_SCHEMA)
                _migrate(self._conn, self.path)
            self.version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(unreadable(self.path, exc, "open")) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------

    def insert_rows(self, rows: Sequence[StoredRow]) -> int:
        """Insert in one short transaction; duplicates (same id) are ignored. Returns rows added."""
        if not rows:
            return 0
        with self._transaction() as conn:
            # rowcount, not total_changes: the rollup trigger's writes are not rows added.
            return int(conn.executemany(_INSERT, [r.values() for r in rows]).rowcount)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one BEGIN IMMEDIATE … COMMIT (ROLLBACK on any error)."""
        with self._lock, _immediate(self._conn) as conn:
            yield conn

    def _write(self, sql: str, params: Iterable[Sequence[Any]]) -> int:
        with self._transaction() as conn:
            return int(conn.executemany(sql, params).rowcount)

    def mark_synced(self, ids: Sequence[str], at: str, rowids: Sequence[int] | None = None) -> int:
        """Record that the cloud acknowledged these rows (call only after the 200).

        ``rowids`` (the rows' rowids as ``fetch_unsynced_rows`` read them, in the order of
        ``ids``) finds the rows by rowid, each still checked against its id: about half
        the time of the id index for a 1,000-row batch. A rowid whose row is gone or now
        holds another id (deleted meanwhile) changes nothing."""
        # One statement per 400-500 ids (an IN list), not one per id: about half the time
        # for a 1,000-row batch, which the cloud worker marks between uploads.
        if rowids is not None and len(rowids) != len(ids):
            raise ValueError("mark_synced: one rowid per id")
        step = _IN_CHUNK if rowids is None else _IN_CHUNK * 4 // 5  # two lists per statement
        chunks = [list(ids[i:i + step]) for i in range(0, len(ids), step)]
        with self._transaction() as conn:
            if rowids is None:
                return sum(
                    conn.execute(f"UPDATE requests SET synced_at = ? WHERE id IN ({','.join('?' * len(chunk))})",
                                 (at, *chunk)).rowcount
                    for chunk in chunks
                )
            changed = 0
            for n, chunk in enumerate(chunks):
                marks = ",".join("?" * len(chunk))
                # +id: check the id on the row found by rowid, not through the id index.
                changed += conn.execute(
                    f"UPDATE requests SET synced_at = ? WHERE rowid IN ({marks}) AND +id IN ({marks})",
                    (at, *rowids[n * step:n * step + len(chunk)], *chunk)).rowcount
            return changed

    def quarantine_rows(self, ids: Sequence[str], status: int | None, detail: str) -> int:
        """Rows the backend refused for good (400/422): never sent again, always reported."""
        from datetime import UTC, datetime

        at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return self._write(
            "INSERT OR REPLACE INTO sync_quarantine (id, status, detail, at) VALUES (?, ?, ?, ?)",
            [(i, status, detail[:500], at) for i in ids],
        )

    def quarantine_unwritable(self, row_id: str, reason: str, row_json: bytes) -> None:
        """Keep a row ``requests`` refused (the writer's last resort), with the reason."""
        from datetime import UTC, datetime

        at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self._write(
            "INSERT OR REPLACE INTO write_quarantine (id, reason, row_json, at) VALUES (?, ?, ?, ?)",
            [(str(row_id)[:200], reason[:500], bytes(row_json[:65536]), at)],
        )

    # -- retention (hm_agent.retention) --------------------------------------

    def delete_days_before(self, day: str, *, keep_unsynced: bool, limit: int = 500) -> int:
        """Delete up to ``limit`` rows of days before ``day`` in one short transaction (the
        rollups' trigger takes them out of the report sums too); ``keep_unsynced`` keeps rows
        the cloud has not acknowledged. Returns the rows deleted (0: none left to delete)."""
        unsynced = " AND synced_at IS NOT NULL" if keep_unsynced else ""
        with self._transaction() as conn:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM requests WHERE day < ?{unsynced} LIMIT ?", (day, int(limit)))]
            if ids:
                marks = ",".join("?" * len(ids))
                conn.execute(f"DELETE FROM requests WHERE id IN ({marks})", ids)
                conn.execute(f"DELETE FROM sync_quarantine WHERE id IN ({marks})", ids)
                conn.execute(f"DELETE FROM request_bodies WHERE id IN ({marks})", ids)
        return len(ids)

    def insert_bodies(self, bodies: Sequence[tuple[str, bool, bytes]]) -> int:
        """(id, truncated, Fernet ciphertext) of captured bodies (hm_agent.bodies); duplicates ignored."""
        return self._write("INSERT OR IGNORE INTO request_bodies (id, truncated, ciphertext) VALUES (?, ?, ?)",
                           [(i, int(t), c) for i, t, c in bodies])

    def pending_bodies(self, limit: int) -> list[tuple[str, bytes]]:
        """(id, ciphertext) of bodies not uploaded yet whose row the cloud has acknowledged."""
        return [(r[0], bytes(r[1])) for r in self._query_optional(
            "SELECT b.id, b.ciphertext FROM request_bodies b JOIN requests r ON r.id = b.id"
            " WHERE b.synced_at IS NULL AND r.synced_at IS NOT NULL ORDER BY r.ts LIMIT ?", (int(limit),))]

    def count_pending_bodies(self) -> int:
        return int(self._query_optional("SELECT count(*) FROM request_bodies WHERE synced_at IS NULL")[0][0])

    def mark_bodies_synced(self, ids: Sequence[str], at: str) -> int:
        return self._write("UPDATE request_bodies SET synced_at = ? WHERE id = ?", [(at, i) for i in ids])

    def body(self, row_id: str) -> tuple[bool, bytes] | None:
        found = self._query_optional("SELECT truncated, ciphertext FROM request_bodies WHERE id = ?", (row_id,))
        return None if not found else (bool(found[0][0]), bytes(found[0][1]))

    def reclaim_space(self, pages: int = 256) -> int:
        """Give up to ``pages`` free pages back to the file system; returns the free pages left."""
        with self._lock:
            if int(self._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                return 0  # not switched yet: the space is reused by new rows instead
            self._conn.execute(f"PRAGMA incremental_vacuum({max(1, int(pages))})").fetchall()
            return int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])

    def needs_vacuum_switch(self) -> bool:
        """The file still has auto_vacuum NONE (made before schema 4): freed pages are only reused."""
        with self._lock:
            return int(self._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2

    def switch_to_incremental_vacuum(self) -> bool:
        """The one VACUUM that gives a file made before schema 4 auto_vacuum = INCREMENTAL (and
        every free page back); False when there was nothing to do. It rewrites the file and holds
        the write lock throughout (about 15 s per million rows): other writers wait (the writer
        thread keeps its rows in memory and retries). :meth:`interrupt` ends it, changing nothing."""
        with self._lock:
            if int(self._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
                return False
            if self._interrupted:
                raise sqlite3.OperationalError("interrupted")
            self._conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._conn.execute("VACUUM")
            return True

    def interrupt(self) -> None:
        """End the statement running on this connection (from any thread; it raises there), and
        refuse to start a VACUUM on it from now on (an interrupt arriving just before one began)."""
        self._interrupted = True
        self._conn.interrupt()

    def oldest_row_ts(self) -> str | None:
        """The ts of the oldest row (by day, through its index), or None when there is none."""
        found = self._query(
            "SELECT min(ts) FROM requests WHERE day = (SELECT min(day) FROM requests)")
        return None if not found or found[0][0] is None else str(found[0][0])

    def count_write_quarantined(self) -> int:
        return int(self._query("SELECT count(*) FROM write_quarantine")[0][0])

    def count_quarantined(self) -> int:
        return int(self._query("SELECT count(*) FROM sync_quarantine")[0][0])

    def note_ratelimits(self, seen: Sequence[tuple[str, str, str, str]]) -> int:
        """(host, model, ts, limits JSON): keep the latest rate-limit state per host and model."""
        return self._write(
            "INSERT INTO ratelimits (host, model, at, limits) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(host, model) DO UPDATE SET at = excluded.at, limits = excluded.limits "
            "WHERE excluded.at >= ratelimits.at", seen)

    def latest_ratelimits(self) -> list[tuple[str, str, str, str]]:
        """(host, model, at, limits JSON), most recent first."""
        return [tuple(r) for r in self._query_optional(
            "SELECT host, model, at, limits FROM ratelimits ORDER BY at DESC LIMIT 200")]

    def unpriced_rows(self, limit: int = 100_000) -> list[sqlite3.Row]:
        """Rows with tokens but no cost (unknown model when priced): what `report --reprice` retries."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT id, provider, model, host, endpoint, status, stream, input_tokens, output_tokens, "
                "cache_read_tokens, cache_write_tokens, reasoning_tokens, flags, row_json, synced_at "
                "FROM requests WHERE cost_usd IS NULL AND price_version != 'unpriced' "
                "AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL) LIMIT ?", (limit,))
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    def set_prices(self, updates: Sequence[tuple[str, str, str, bytes, str]]) -> int:
        """(cost_usd, price_version, flags, row_json, id) for rows whose cost was unknown."""
        return self._write(
            "UPDATE requests SET cost_usd = ?, price_version = ?, flags = ?, row_json = ? "
            "WHERE id = ? AND cost_usd IS NULL", updates)

    def mark_unsynced(self, ids: Sequence[str]) -> int:
        """Queue rows for upload again (reconcile found the cloud lacks them)."""
        return self._write("UPDATE requests SET synced_at = NULL WHERE id = ?", [(i,) for i in ids])

    # -- reading -----------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def fetch_unsynced(self, limit: int) -> list[tuple[str, bytes]]:
        """``(id, row_json)`` of rows not yet acknowledged by the cloud, oldest first."""
        return self.fetch_unsynced_after(limit, None)[0]

    def fetch_unsynced_after(self, limit: int, after: tuple[str, str] | None
                             ) -> tuple[list[tuple[str, bytes]], tuple[str, str] | None]:
        """Like fetch_unsynced, but only rows after ``after`` = ``(ts, id)``, the last row
        already handed out (in flight, so not marked yet), read on from there by the
        unsynced index; also returns the new ``(ts, id)`` to go on from. A row written
        later with an older ts is found once the caller starts over (``after`` None)."""
        rows, _, cursor = self.fetch_unsynced_rows(limit, after)
        return rows, cursor

    def fetch_unsynced_rows(self, limit: int, after: tuple[str, str] | None
                            ) -> tuple[list[tuple[str, bytes]], list[int], tuple[str, str] | None]:
        """fetch_unsynced_after, plus the rows' rowids (for ``mark_synced(..., rowids=)``)."""
        keyset, params = "", list[str | int]([int(limit)])
        if after is not None:
            keyset = " AND ts >= ? AND (ts > ? OR id > ?)"
            params = [after[0], after[0], after[1], int(limit)]
        rows = self._query(
            "SELECT id, row_json, ts, rowid FROM requests WHERE synced_at IS NULL" + keyset +
            " AND NOT EXISTS (SELECT 1 FROM sync_quarantine q WHERE q.id = requests.id)"
            " ORDER BY ts, id LIMIT ?",
            params,
        )
        cursor = (str(rows[-1][2]), str(rows[-1][0])) if rows else after
        return [(r[0], bytes(r[1])) for r in rows], [int(r[3]) for r in rows], cursor

    def count_unsynced(self) -> int:
        """Rows waiting for upload (quarantined rows are not waiting: they are reported)."""
        # Count the partial index, then subtract the (few) quarantined unsynced rows:
        # a NOT EXISTS per row made this ~50 ms at 100,000 unsynced rows, and the
        # cloud worker counts once per batch (quadratic over a backlog).
        return int(
            self._query(
                "SELECT (SELECT count(*) FROM requests WHERE synced_at IS NULL)"
                " - (SELECT count(*) FROM sync_quarantine q CROSS JOIN requests r"
                " ON r.id = q.id WHERE r.synced_at IS NULL)"
            )[0][0]
        )

    def count_rows(self, day: str | None = None) -> int:
        if day is None:
            return int(self._query("SELECT count(*) FROM requests")[0][0])
        return int(self._query("SELECT count(*) FROM requests WHERE day = ?", (day,))[0][0])

    def totals_by_day(self, from_day: str, to_day: str) -> dict[str, tuple[int, str | None]]:
        """``{day: (rows, cost)}`` for days with rows in [from_day, to_day].

        ``cost`` is the exact decimal sum of the known costs as a string, or
        None when no row of that day has a known price.
        """
        out: dict[str, tuple[int, Decimal | None]] = {}
        for day, cost in self._query(
            "SELECT day, cost_usd FROM requests WHERE day BETWEEN ? AND ?", (from_day, to_day)
        ):
            rows, total = out.get(day, (0, None))
            if cost is not None:
                total = (total or Decimal(0)) + Decimal(cost)
            out[day] = (rows + 1, total)
        return {d: (n, None if c is None else format(c, "f")) for d, (n, c) in sorted(out.items())}

    def rows_for_days(self, days: Iterable[str]) -> list[tuple[str, bytes]]:
        """``(id, row_json)`` of every row (synced or not) on these days: reconcile re-sends them."""
        wanted = sorted(set(days))
        if not wanted:
            return []
        marks = ",".join("?" for _ in wanted)
        rows = self._query(
            f"SELECT id, row_json FROM requests WHERE day IN ({marks}) ORDER BY ts, id", wanted
        )
        return [(r[0], bytes(r[1])) for r in rows]


    def report_rows(self, from_day: str, to_day: str) -> list[sqlite3.Row]:
        """The columns ``report`` aggregates, for days in [from_day, to_day]."""
        # A database the daemon has not upgraded yet (report opens read-only) has no
        # attribution columns: they read as NULL.
        attribution = ", ".join(
            c if self.version >= 2 else f"NULL AS {c}" for c in ATTRIBUTION_COLUMNS
        )
        with self._lock:
            cur = self._conn.execute(
                "SELECT day, provider, model, host, cost_usd, input_tokens, output_tokens, "
                f"cache_read_tokens, cache_write_tokens, reasoning_tokens, flags, status, {attribution} "
                "FROM requests WHERE day BETWEEN ? AND ?",
                (from_day, to_day),
            )
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    def rollups_pending(self) -> int:
        """Rows written before the upgrade to rollups that are not in them yet (0: complete)."""
        if self.version < 3:
            return 0
        done, upto = self._query("SELECT done, upto FROM rollup_fill")[0]
        return max(0, int(upto) - int(done))

    def fill_rollups(self, chunk: int = 20_000) -> int:
        """Add up to ``chunk`` rows (by rowid) written before the upgrade to the rollups, in
        one short transaction; returns the rows still to add (0: complete)."""
        with self._transaction() as conn:
            done, upto = conn.execute("SELECT done, upto FROM rollup_fill").fetchone()
            end = min(int(upto), int(done) + max(1, chunk))
            if end > done:
                conn.execute(_FILL_ROLLUPS, (done, end))
                conn.execute("UPDATE rollup_fill SET done = ?", (end,))
        return int(upto) - end

    def report_rollups(self, from_day: str, to_day: str, group_by: Sequence[str] = (),
                       equal: Sequence[tuple[str, str | None]] = ()) -> list[tuple[Any, ...]] | None:
        """Rollups of days in [from_day, to_day] whose ``equal`` columns have those values
        (None: NULL), summed per distinct ``group_by`` values: tuples of the group_by values,
        then ROLLUP_SUMS, then cost_decimals. None when ``report`` must read the rows
        instead: a database not upgraded yet, or a row the sums cannot hold exactly."""
        if self.version < 3 or self.rollups_pending():
            return None
        known = ("day", *ROLLUP_DIMENSIONS)
        if any(c not in known for c in group_by) or any(c not in known for c, _ in equal):
            raise ValueError(f"rollups are grouped and filtered only by {', '.join(known)}")
        where = "".join(f" AND {c} IS NULL" if v is None else f" AND {c} = ?" for c, v in equal)
        params = [from_day, to_day, *(v for _, v in equal if v is not None)]
        columns = ", ".join([*group_by, *(f"sum({c})" for c in ROLLUP_SUMS), "max(cost_decimals)"])
        grouping = f" GROUP BY {', '.join(group_by)}" if group_by else ""
        try:
            found = self._query(
                f"SELECT {columns} FROM request_rollups WHERE day BETWEEN ? AND ?{where}{grouping}", params
            )
        except sqlite3.OperationalError as exc:
            if "overflow" in str(exc):
                return None
            raise
        found = [r for r in found if r[len(group_by)]]  # no rollup at all (NULL), or emptied by updates
        unexact = len(group_by) + ROLLUP_SUMS.index("unexact")
        for roll in found:
            if roll[unexact] or not all(type(v) is int for v in roll[len(group_by):]):
                return None
        return found

    # -- row feed and budgets (hm_agent.rowfeed, hm_agent.budgets) ------------

    def feed_columns(self) -> tuple[str, ...]:
        """The requests columns listeners get (all but row_json and synced_at)."""
        cols = getattr(self, "_feed_columns", None)
        if cols is None:
            info = self._query("PRAGMA table_info(requests)")
            cols = tuple(r[1] for r in info if r[1] not in ("row_json", "synced_at"))
            self._feed_columns = cols
        return cols

    def max_rowid(self) -> int:
        return int(self._query("SELECT coalesce(max(rowid), 0) FROM requests")[0][0])

    def rows_after(self, rowid: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """``(rowid, row)`` of rows inserted after ``rowid``, in insertion order."""
        cols = self.feed_columns()
        found = self._query(
            f"SELECT rowid, {', '.join(cols)} FROM requests WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (int(rowid), int(limit)),
        )
        return [(r[0], dict(zip(cols, r[1:], strict=True))) for r in found]

    def budget_rows(self, first_day: str, last_day: str, start_ts: str, end_ts: str,
                    upto_rowid: int | None = None, provider: str | None = None,
                    project: str | None = None) -> list[tuple[Any, ...]]:
        """``(provider, model, project, tags, status, cost_usd)`` of the rows whose ts is in
        [start_ts, end_ts) (rowid <= upto_rowid, provider and project when given)."""
        have = set(self.feed_columns())
        wanted = ("provider", "model", "project", "tags", "status", "cost_usd")
        cols = ", ".join(c if c in have else f"NULL AS {c}" for c in wanted)
        sql = f"SELECT {cols} FROM requests WHERE day BETWEEN ? AND ? AND ts >= ? AND ts < ?"
        params: list[Any] = [first_day, last_day, start_ts, end_ts]
        if upto_rowid is not None:
            sql += " AND rowid <= ?"
            params.append(int(upto_rowid))
        if provider is not None:
            sql += " AND lower(provider) = ?"
            params.append(provider.lower())
        if project is not None:
            if "project" not in have:
                return []
            sql += " AND project = ?"
            params.append(project)
        return self._query(sql, params)

    def _query_optional(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A query on a table a read-only store of an older daemon may not have yet."""
        try:
            return self._query(sql, params)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def fired_thresholds(self, budget: str, period: str) -> set[int]:
        return {int(r[0]) for r in self._query_optional(
            "SELECT threshold FROM budget_alerts WHERE budget = ? AND period = ?", (budget, period))}

    def record_budget_alert(self, alert: Any) -> bool:
        """Remember that a threshold fired; False if it had already (then it is not sent again)."""
        import json
        from dataclasses import asdict

        return self._write(
            "INSERT OR IGNORE INTO budget_alerts (budget, period, threshold, fired_at, alert_json)"
            " VALUES (?, ?, ?, ?, ?)",
            [(alert.budget, alert.period, alert.threshold, alert.fired_at, json.dumps(asdict(alert)))],
        ) == 1

    def mark_alert_delivered(self, budget: str, period: str, threshold: int, at: str) -> None:
        self._write("UPDATE budget_alerts SET delivered_at = ? WHERE budget = ? AND period = ? AND threshold = ?",
                    [(at, budget, period, threshold)])

    def undelivered_alerts(self, since: str) -> list[str]:
        """alert_json of alerts fired since ``since`` whose delivery never finished (a crash)."""
        return [r[0] for r in self._query_optional(
            "SELECT alert_json FROM budget_alerts WHERE delivered_at IS NULL AND fired_at >= ? ORDER BY fired_at",
            (since,))]

    def budget_snoozes(self) -> dict[str, float]:
        return {r[0]: float(r[1]) for r in self._query_optional("SELECT budget, until FROM budget_snoozes")}

    def set_budget_snooze(self, budget: str, until: float | None) -> None:
        if until is None:
            self._write("DELETE FROM budget_snoozes WHERE budget = ?", [(budget,)])
        else:
            self._write("INSERT OR REPLACE INTO budget_snoozes (budget, until) VALUES (?, ?)", [(budget, until)])

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])

    # -- cloud_state -------------------------------------------------------

    def get_cloud_state(self) -> dict[str, Any] | None:
        with self._lock:
            cur = self._conn.execute(f"SELECT {', '.join(CLOUD_STATE_FIELDS)} FROM cloud_state WHERE id = 1")
            row = cur.fetchone()
        return None if row is None else dict(zip(CLOUD_STATE_FIELDS, row, strict=True))

    def set_cloud_state(self, **fields: Any) -> None:
        """Create or update the single cloud_state row; only the given fields change."""
        unknown = set(fields) - set(CLOUD_STATE_FIELDS)
        if unknown:
            raise ValueError(f"unknown cloud_state fields: {', '.join(sorted(unknown))}")
        if not fields:
            return
        names = list(fields)
        sets = ", ".join(f"{n} = excluded.{n}" for n in names)
        sql = (
            f"INSERT INTO cloud_state (id, {', '.join(names)}) VALUES (1, {', '.join('?' for _ in names)}) "
            f"ON CONFLICT(id) DO UPDATE SET {sets}"
        )
        self._write(sql, [[fields[n] for n in names]])

    def clear_cloud_state(self) -> None:
        self._write("DELETE FROM cloud_state", [()])


def open_store(path: Path, *, readonly: bool = False) -> Store:
    return Store(path, readonly=readonly)
