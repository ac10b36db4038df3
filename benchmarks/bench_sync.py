"""Sync end to end: 100,000 unsynced rows from a real daemon store to a local hm_cloud.

One local backend (``halton-meter-cloud serve``, fresh SQLite) and a real
daemon in a temp home, paired with it (``cloud connect --no-browser`` +
scripted approval, workspace "bench"). Then, for each of ``--rounds`` rounds:

- daemon: the worker is paused (``cloud pause``), 100,000 new realistic rows
  are seeded into the daemon's store, ``cloud resume`` starts the clock, and it
  stops when the store holds no unsynced row (polled read-only every 20 ms).
  Measured: rows/s end to end (worker start, store reads, batching, zstd,
  HTTP, backend ingest, marking rows synced) and the daemon's CPU time
  (utime + stime of every thread, /proc/<pid>/stat) per 1,000 rows;
- baseline, same rows, same backend, its own workspace ("baseline"): one
  process POSTs them with httpx as plain JSON batches of 1,000 (row JSON
  decoded to dicts, body made with json.dumps, no compression), one request at
  a time — the obvious client. The rows are read before its clock starts.
  Measured: rows/s and the client's CPU time per 1,000 rows.

The two alternate (daemon first in odd rounds, baseline first in even ones)
so both see the backend's table at similar sizes and the same machine load.
The backend must end up holding every row in each workspace.

Run: ``python benchmarks/bench_sync.py [--rows N] [--rounds R]``. The LAST
line is both medians (rows/s) and their ratio, daemon / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from tests.support.cloudserver import running_cloud  # noqa: E402
from tests.support.daemon import Daemon, start_daemon, stop_or_kill  # noqa: E402
from tests.support.seed import pair_daemon, seed_rows  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "password123"
BASE_EMAIL = "baseline@example.com"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def unsynced(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM requests WHERE synced_at IS NULL").fetchone()[0])
    finally:
        conn.close()


def cli_ok(d: Daemon, *args: str) -> None:
    out = d.cli(*args)
    if out.returncode != 0:
        raise RuntimeError(f"halton-meter {' '.join(args)} failed: {out.stderr or out.stdout}")


def seed_round(d: Daemon, n: int, k: int) -> list[bytes]:
    """Seed n new rows (the worker is paused); return their row_json in upload order."""
    with sqlite3.connect(d.db_path) as conn:
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM requests").fetchone()[0]
    t = time.perf_counter()
    start = datetime(2026, 11, 24, tzinfo=UTC) + timedelta(minutes=20 * k)
    seed_rows(d.db_path, n, start=start, seed=k)
    print(f"round {k + 1}: seeded {n:,} rows in {time.perf_counter() - t:.1f} s", flush=True)
    with sqlite3.connect(d.db_path) as conn:
        return [bytes(r[0]) for r in conn.execute(
            "SELECT row_json FROM requests WHERE rowid > ? ORDER BY ts, id", (last,))]


def daemon_round(d: Daemon, n: int) -> tuple[float, float]:
    """(seconds, daemon CPU seconds) from `cloud resume` until the store is drained."""
    pid = d.pid
    assert pid is not None
    time.sleep(1.0)  # let the daemon settle: the paused worker has stopped
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    cli_ok(d, "cloud", "resume")
    while unsynced(d.db_path):
        if time.perf_counter() - t0 > 900:
            raise RuntimeError("sync did not finish within 15 minutes")
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    cli_ok(d, "cloud", "pause")
    return elapsed, cpu


def baseline_round(base_url: str, token: str, rows: list[bytes]) -> tuple[float, float]:
    """(seconds, client CPU seconds): plain JSON batches of 1,000 via httpx, one at a time."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, timeout=120, trust_env=False) as client:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for start in range(0, len(rows), 1000):
            chunk = [json.loads(raw) for raw in rows[start:start + 1000]]
            body = json.dumps({"batch_id": str(uuid.uuid4()), "rows": chunk})
            answer = client.post("/v1/requests/batch", content=body, headers=headers)
            answer.raise_for_status()
        return time.perf_counter() - t0, time.process_time() - cpu0


def backend_counts(db_url: str) -> dict[str, int]:
    """Rows per workspace slug in the backend's database."""
    conn = sqlite3.connect(f"file:{db_url[len('sqlite:///'):]}?mode=ro", uri=True)
    try:
        return dict(conn.execute(
            "SELECT w.slug, count(*) FROM usage_rows u JOIN workspaces w ON w.id = u.workspace_id"
            " GROUP BY w.slug").fetchall())
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.rows
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmpdir:
        tmp = Path(tmpdir)
        with running_cloud(tmp / "cloud") as cloud:
            cloud.create_user(EMAIL, PASSWORD, "bench")
            cloud.create_user(BASE_EMAIL, PASSWORD, "baseline")
            token = cloud.pair(BASE_EMAIL, PASSWORD, "baseline")["token"]
            d = start_daemon(tmp / "home")
            try:
                pair_daemon(d, cloud, EMAIL, PASSWORD, "bench")
                deadline = time.monotonic() + 20
                while json.loads(d.cli("cloud", "status", "--json").stdout).get("state") != "ACTIVE":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the cloud worker did not start")
                    time.sleep(0.1)
                cli_ok(d, "cloud", "pause")
                for k in range(args.rounds):
                    rows = seed_round(d, n, k)
                    steps = ["daemon", "baseline"] if k % 2 == 0 else ["baseline", "daemon"]
                    for step in steps:
                        if step == "daemon":
                            elapsed, cpu = daemon_round(d, n)
                            ours.append((elapsed, cpu))
                            print(f"  daemon:   {n / elapsed:9,.0f} rows/s end to end ({elapsed:.2f} s); "
                                  f"daemon CPU {cpu / n * 1e6:.1f} ms per 1,000 rows", flush=True)
                        else:
                            elapsed, cpu = baseline_round(cloud.base_url, token, rows)
                            theirs.append((elapsed, cpu))
                            print(f"  baseline: {n / elapsed:9,.0f} rows/s ({elapsed:.2f} s); "
                                  f"client CPU {cpu / n * 1e6:.1f} ms per 1,000 rows", flush=True)
            finally:
                stop_or_kill(d)
            counts = backend_counts(cloud.db_url)
    want = n * args.rounds
    if counts.get("bench") != want or counts.get("baseline") != want:
        raise SystemExit(f"the backend holds {counts}, expected {want} rows in each workspace")
    rate = statistics.median(n / e for e, _ in ours)
    base = statistics.median(n / e for e, _ in theirs)
    print(f"backend holds {want:,} rows per workspace, as expected")
    print(f"daemon   (median of {len(ours)}): {rate:,.0f} rows/s end to end; daemon CPU "
          f"{statistics.median(c for _, c in ours) / n * 1e6:.1f} ms per 1,000 rows")
    print(f"baseline (median of {len(theirs)}): {base:,.0f} rows/s (httpx, plain JSON); client CPU "
          f"{statistics.median(c for _, c in theirs) / n * 1e6:.1f} ms per 1,000 rows")
    print(f"daemon sync vs plain httpx uploader: {rate:,.0f} vs {base:,.0f} rows/s end to end, x{rate / base:.2f}")


if __name__ == "__main__":
    main()
