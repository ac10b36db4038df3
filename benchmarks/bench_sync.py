"""Sync end to end: unsynced rows from a real daemon store to a local hm_cloud, on SQLite and PostgreSQL.

For each backend — ``halton-meter-cloud serve`` on a fresh SQLite file (1
worker), then on a throwaway PostgreSQL 15 (tests/support/postgres.py, 2
workers) — a real daemon in a temp home is paired with it (``cloud connect
--no-browser`` + scripted approval, workspace "bench"). Then, for each of
``--rounds`` rounds (default 9 of 20,000 rows: short rounds, alternated, so a
burst of other load on a shared machine falls on both sides alike):

- daemon: the worker is paused, ``--rows`` new realistic rows are seeded into
  the daemon's store, and the clock starts when this process sends
  ``cloud.resume`` on the daemon's control socket (the command the ``cloud
  resume`` CLI sends, without the CLI's own Python start-up, ~0.5 s, which is
  not sync). It stops when the store holds no unsynced row (polled read-only
  every 10 ms). Timed: the worker waking, store reads, batching, zstd, HTTP,
  backend ingest, marking rows synced. Also measured: the daemon's CPU time
  (utime + stime of all its threads, /proc/<pid>/stat), the backend's (its
  processes, workers included) and, on PostgreSQL, the database server's
  (postmaster and its backends) per 1,000 rows;
- baseline, same rows, same backend, its own workspace ("baseline"): this
  process POSTs them with httpx as plain JSON batches of 1,000 (row JSON
  decoded to dicts, body made with json.dumps, no compression), one request at
  a time — the obvious client. The rows are read before its clock starts.
  Measured: rows/s, the client's, the backend's and the database's CPU time
  per 1,000 rows.

The two alternate (daemon first in odd rounds, baseline first in even ones)
so both see the backend's table at similar sizes and the same machine load.
Each backend must end up holding every row of each workspace exactly once.
Per backend it prints the medians of both sides and also the median of the
rounds' own ratios (each round's daemon against the baseline run next to it).

Run: ``python benchmarks/bench_sync.py [--rows N] [--rounds R] [--backend sqlite|postgresql|both]``.
The LAST line is the headline: both medians (rows/s) and their ratio, daemon /
baseline, on SQLite (the figure issue 18 tracks), then on PostgreSQL.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from tests.support.cloudserver import CloudServer, running_cloud  # noqa: E402
from tests.support.daemon import Daemon, start_daemon, stop_or_kill  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402
from tests.support.seed import pair_daemon, seed_rows  # noqa: E402

from hm_agent.control import control_call  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "password123"
BASE_EMAIL = "baseline@example.com"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (uvicorn's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(") ", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


def unsynced(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM requests WHERE synced_at IS NULL").fetchone()[0])
    finally:
        conn.close()


Round = tuple[float, float, float, float]  # seconds; CPU seconds of the client or daemon, backend, database


@dataclass
class Figures:
    daemon: list[Round] = field(default_factory=list)
    baseline: list[Round] = field(default_factory=list)


@dataclass
class Backend:
    cloud: CloudServer
    db_pid: int | None  # PostgreSQL's postmaster (its backends are its children); None: in-process SQLite

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the backend's processes and of the database server's."""
        return (tree_cpu_seconds(self.cloud.process.pid),
                tree_cpu_seconds(self.db_pid) if self.db_pid is not None else 0.0)


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


def daemon_round(d: Daemon, backend: Backend) -> Round:
    """(seconds, daemon CPU, backend CPU, database CPU) from cloud.resume on the control socket
    until the store is drained."""
    pid = d.pid
    assert pid is not None
    time.sleep(1.0)  # let the daemon settle: the paused worker has stopped
    cpu0, (back0, db0) = cpu_seconds(pid), backend.cpu()
    t0 = time.perf_counter()
    control_call(d.home, "cloud.resume")
    while unsynced(d.db_path):
        if time.perf_counter() - t0 > 900:
            raise RuntimeError("sync did not finish within 15 minutes")
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    cpu, (back, db) = cpu_seconds(pid) - cpu0, backend.cpu()
    control_call(d.home, "cloud.pause")
    return elapsed, cpu, back - back0, db - db0


def baseline_round(backend: Backend, token: str, rows: list[bytes]) -> Round:
    """(seconds, client CPU, backend CPU, database CPU): plain JSON batches of 1,000 via httpx,
    one at a time."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=backend.cloud.base_url, timeout=120, trust_env=False) as client:
        back0, db0 = backend.cpu()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for start in range(0, len(rows), 1000):
            chunk = [json.loads(raw) for raw in rows[start:start + 1000]]
            body = json.dumps({"batch_id": str(uuid.uuid4()), "rows": chunk})
            answer = client.post("/v1/requests/batch", content=body, headers=headers)
            answer.raise_for_status()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        back, db = backend.cpu()
        return elapsed, cpu, back - back0, db - db0


def backend_counts(db_url: str) -> dict[str, tuple[int, int]]:
    """(rows, distinct row ids) per workspace slug in the backend's database."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {slug: (int(rows), int(ids)) for slug, rows, ids in conn.execute(text(
                "SELECT w.slug, count(*), count(DISTINCT u.id) FROM usage_rows u"
                " JOIN workspaces w ON w.id = u.workspace_id GROUP BY w.slug"))}
    finally:
        engine.dispose()


def per_1000(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:.1f} ms"


def cpu_line(who: str, cpus: tuple[float, float, float], n: int, database: bool) -> str:
    """``cpus``: CPU seconds of the client or daemon, the backend, the database server."""
    db = f", PostgreSQL CPU {per_1000(cpus[2], n)}" if database else ""
    return f"per 1,000 rows {who} CPU {per_1000(cpus[0], n)}, backend CPU {per_1000(cpus[1], n)}{db}"


def run_backend(label: str, db_url: str, workers: int, n: int, rounds: int, tmp: Path,
                db_pid: int | None = None) -> Figures:
    figures = Figures()
    print(f"{label} backend ({workers} worker{'s' if workers > 1 else ''}):", flush=True)
    with running_cloud(tmp / label, db_url=db_url, extra_args=("--workers", str(workers))) as cloud:
        backend = Backend(cloud, db_pid)
        cloud.create_user(EMAIL, PASSWORD, "bench")
        cloud.create_user(BASE_EMAIL, PASSWORD, "baseline")
        token = cloud.pair(BASE_EMAIL, PASSWORD, "baseline")["token"]
        d = start_daemon(tmp / f"home-{label}")
        try:
            pair_daemon(d, cloud, EMAIL, PASSWORD, "bench")
            deadline = time.monotonic() + 20
            while json.loads(d.cli("cloud", "status", "--json").stdout).get("state") != "ACTIVE":
                if time.monotonic() > deadline:
                    raise RuntimeError("the cloud worker did not start")
                time.sleep(0.1)
            control_call(d.home, "cloud.pause")
            for k in range(rounds):
                rows = seed_round(d, n, k)
                for step in (["daemon", "baseline"] if k % 2 == 0 else ["baseline", "daemon"]):
                    if step == "daemon":
                        r = daemon_round(d, backend)
                        figures.daemon.append(r)
                        print(f"  daemon:   {n / r[0]:9,.0f} rows/s end to end ({r[0]:.2f} s); "
                              f"{cpu_line('daemon', r[1:], n, db_pid is not None)}", flush=True)
                    else:
                        r = baseline_round(backend, token, rows)
                        figures.baseline.append(r)
                        print(f"  baseline: {n / r[0]:9,.0f} rows/s ({r[0]:.2f} s); "
                              f"{cpu_line('client', r[1:], n, db_pid is not None)}", flush=True)
        finally:
            stop_or_kill(d)
    counts = backend_counts(db_url)
    want = (n * rounds, n * rounds)
    if counts.get("bench") != want or counts.get("baseline") != want:
        raise SystemExit(f"{label}: the backend holds (rows, distinct ids) {counts}, expected {want} per workspace")
    print(f"  backend holds {want[0]:,} rows per workspace, each once, as expected")
    paired = statistics.median(b[0] / d[0] for d, b in zip(figures.daemon, figures.baseline, strict=True))
    for name, runs, who in (("daemon", figures.daemon, "daemon"), ("baseline", figures.baseline, "client")):
        cpus = (statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs),
                statistics.median(r[3] for r in runs))
        print(f"  {name + ':':9} median of {len(runs)}: {median_rate(runs, n):,.0f} rows/s; "
              f"{cpu_line(who, cpus, n, db_pid is not None)}")
    print(f"  median of the rounds' own ratios (daemon / baseline): x{paired:.2f}")
    return figures


def median_rate(runs: list[Round], n: int) -> float:
    return statistics.median(n / r[0] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    n = args.rows
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmpdir:
        tmp = Path(tmpdir)
        if args.backend in ("sqlite", "both"):
            results["SQLite"] = run_backend("SQLite", f"sqlite:///{tmp / 'cloud.sqlite'}", 1, n, args.rounds, tmp)
        if args.backend in ("postgresql", "both"):
            with running_postgres() as pg:
                postmaster = int((pg.root / "data" / "postmaster.pid").read_text().split()[0])
                results["PostgreSQL"] = run_backend("PostgreSQL", pg.create_database("bench_sync"), 2,
                                                    n, args.rounds, tmp, postmaster)
    parts = []
    for label, figures in results.items():
        ours, theirs = median_rate(figures.daemon, n), median_rate(figures.baseline, n)
        workers = " (2 workers)" if label == "PostgreSQL" else ""
        parts.append(f"{label}{workers} {ours:,.0f} vs {theirs:,.0f} rows/s end to end, x{ours / theirs:.2f}")
    print("daemon sync vs plain httpx uploader: " + "; ".join(parts))


if __name__ == "__main__":
    main()
