"""`halton-meter start` on a store made before schema 4, whose file still has auto_vacuum NONE.

Schema 4 wants ``auto_vacuum = INCREMENTAL`` (retention gives space back a few pages
at a time), and an existing file switches only by one ``VACUUM``, which rewrites it
whole (about 15 s per million rows). This measures, on one ``--rows`` store of the
release before (schema 3, auto_vacuum NONE):

- the ``VACUUM`` alone (a copy switched by hand: what a start used to wait for);
- ``halton-meter start`` (a subprocess, until the daemon answers) on a home with
  the schema-3 store, against a home with the same store already switched (the
  baseline, same run); each start is stopped again;
- the switch as the retention component now runs it, in the background, while a
  writer inserts 20-row batches every 50 ms with the daemon writer's retry on a
  locked database: its longest wait, and that every row is there afterwards.

Run: ``python benchmarks/bench_upgrade.py [--rows 200000]``. The LAST line is the
start time on the schema-3 store against the switched one, with the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.daemon import start_daemon, stop_or_kill  # noqa: E402
from tests.support.seed import store_of_schema  # noqa: E402

from hm_agent.store import _INSERT, Store, StoredRow  # noqa: E402

CHUNK = 50_000
ROW_JSON = b'{"pad": "' + b"x" * 600 + b'"}'  # ~800 bytes a row in all, like real rows


def row(i: int, day: str = "2026-06-01") -> tuple[object, ...]:
    return (f"{i:08x}-0000-4000-8000-000000000000", f"{day}T10:00:00.000Z", day, "openai", "gpt-4o-mini",
            "api.openai.com", "/v1/chat/completions", 200, 0, 1200, 300, None, None, None, "0.000360",
            "bench", 850, None, "", ROW_JSON, "acme", "org/acme", "main", "python3", "dev", None)


def stored(i: int) -> StoredRow:
    """A row of today as the writer thread builds it (row() less its ``day``, which values() adds)."""
    r = row(i, "2026-11-29")
    return StoredRow(*r[:2], *r[3:])  # type: ignore[arg-type]


def schema_3_store(db: Path, n: int) -> None:
    """A store exactly as schema 3 left it (auto_vacuum NONE), holding ``n`` rows."""
    with store_of_schema(db, 3):
        pass
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a throwaway benchmark file
    for first in range(0, n, CHUNK):
        conn.execute("BEGIN")
        conn.executemany(_INSERT, [row(i) for i in range(first, min(n, first + CHUNK))])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()


def vacuum_by_hand(db: Path) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    t0 = time.perf_counter()
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
    took = time.perf_counter() - t0
    conn.close()
    return took


def start_seconds(home: Path, repeats: int) -> float:
    """The fastest of ``repeats`` `halton-meter start` runs (each stopped again)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        daemon = start_daemon(home)
        best = min(best, time.perf_counter() - t0)
        stop_or_kill(daemon)
    return best


def switch_while_writing(db: Path) -> tuple[float, float, float, int, int]:
    """(open s, switch s, longest insert wait s, rows written, rows found) for the background switch."""
    t0 = time.perf_counter()
    store = Store(db)
    opened = time.perf_counter() - t0
    switch = getattr(store, "switch_to_incremental_vacuum", None)
    writer = Store(db, busy_timeout_ms=200)  # the daemon writer's own connection and timeout
    before = writer.count_rows()
    done = threading.Event()
    took = [0.0]

    def background() -> None:
        t = time.perf_counter()
        if switch is not None:
            switch()
        took[0] = time.perf_counter() - t
        done.set()

    thread = threading.Thread(target=background)
    thread.start()
    longest, written, i = 0.0, 0, 10**9
    while not done.is_set() or written < 200:
        batch = [stored(i + k) for k in range(20)]
        i += 20
        t = time.perf_counter()
        while True:  # the writer's retry: a locked database keeps the rows in memory
            try:
                writer.insert_rows(batch)
                break
            except sqlite3.OperationalError:
                time.sleep(0.02)
        longest = max(longest, time.perf_counter() - t)
        written += len(batch)
        time.sleep(0.05)
    thread.join()
    found = writer.count_rows() - before
    mode = int(store._conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    writer.close()
    store.close()
    print(f"  background switch: auto_vacuum now {mode} (2 = INCREMENTAL)", flush=True)
    return opened, took[0], longest, written, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as tmp:
        base = Path(tmp)
        made = base / "schema3.sqlite"
        t0 = time.perf_counter()
        schema_3_store(made, args.rows)
        print(f"  made a schema-3 store of {args.rows:,} rows ({made.stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        old_home, new_home = base / "old" / "home", base / "switched" / "home"
        for home in (old_home, new_home):
            home.mkdir(parents=True, mode=0o700)
        shutil.copy(made, new_home / "db.sqlite")
        Store(new_home / "db.sqlite").close()  # upgraded to this release's schema
        vacuum_s = vacuum_by_hand(new_home / "db.sqlite")
        print(f"  the one VACUUM that switches it: {vacuum_s:.2f} s", flush=True)
        baseline = start_seconds(new_home, args.repeats)
        olds = []
        for _ in range(args.repeats):  # a fresh schema-3 copy each time: the first start is the one that counts
            shutil.copy(made, old_home / "db.sqlite")
            olds.append(start_seconds(old_home, 1))
        old = min(olds)
        print(f"  halton-meter start: schema-3 store {old:.2f} s, switched store {baseline:.2f} s", flush=True)
        background = base / "background.sqlite"
        shutil.copy(made, background)
        opened, switch_s, longest, written, found = switch_while_writing(background)
        print(f"  opening the schema-3 store: {opened * 1000:.0f} ms; the switch in the background took "
              f"{switch_s:.2f} s; the writer's longest wait {longest * 1000:.0f} ms; "
              f"{written:,} rows written, {found:,} found", flush=True)
        if found != written:
            print(f"LOST ROWS: {written - found}", flush=True)
            return 1
        print(f"halton-meter start on a {args.rows:,}-row schema-3 store vs the same store already switched: "
              f"{old:.2f} s vs {baseline:.2f} s, x{old / baseline:.2f} (the VACUUM alone: {vacuum_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
