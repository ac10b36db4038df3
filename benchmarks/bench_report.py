"""`halton-meter report` over a big local store: rollups against a scan of the rows.

Fills a fresh db.sqlite (the daemon's own schema, rollup trigger included)
with ``--rows`` realistic rows over 90 days (40 models of 6 providers, a few
used most; each day's calls from 5 of 76 project/branch/program contexts with
their repo and team tag; 3 % unpriced, 2 % errors),
inserted with executemany in 100,000-row transactions into a store of the
release before rollups, then upgraded by opening it (the upgrade is timed).
Then, each the median
of ``--repeats`` runs:

- ``halton-meter report --from … --to …`` as a user runs it (a subprocess:
  Python start-up, the read-only open, the rollups, the table), and the same
  with ``--by project`` and with ``--where``;
- baseline, same run, same database: one SQL ``GROUP BY model`` over the rows
  of the range (the day index, ``total()`` of the costs: not even exact), in
  this process;
- up to ``--raw-limit`` rows, also the report as it was before rollups (every
  row read into Python), with ``build_report(..., rollups=False)``.

Run: ``python benchmarks/bench_report.py [--rows 200000]``; the aim is
``--rows 10000000`` under 1 s (about 6 GB of disk and several minutes to fill).
The LAST line is the CLI's median wall time against the baseline, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hm_agent.store import _INSERT, Store  # noqa: E402

DAYS = 90
FIRST_DAY = date(2026, 1, 1)
CHUNK = 100_000
PROVIDERS = {
    "openai": "api.openai.com", "anthropic": "api.anthropic.com", "google": "generativelanguage.googleapis.com",
    "mistral": "api.mistral.ai", "groq": "api.groq.com", "deepseek": "api.deepseek.com",
}


def templates(rng: random.Random, n: int = 20_000) -> list[tuple[object, ...]]:
    """Row columns but id/ts/day and attribution: model (a few used most), tokens, cost, status."""
    models = [(p, f"{p}-model-{i}") for i, p in enumerate(list(PROVIDERS) * 7)][:40]
    weights = [1 / (rank + 1) for rank in range(len(models))]  # a few models carry most calls
    out = []
    for provider, model in rng.choices(models, weights, k=n):
        inp, outp = rng.randint(20, 60_000), rng.randint(1, 4_000)
        priced = rng.random() < 0.97
        cost = format((Decimal(inp) * Decimal("2.5") + Decimal(outp) * Decimal(10)) / 1_000_000, "f") if priced else None
        status = 200 if rng.random() < 0.98 else rng.choice((0, 429, 500))
        out.append((
            provider, model, PROVIDERS[provider], "/v1/chat/completions", status, 1, inp, outp,
            rng.choice((None, rng.randint(0, inp // 2))), None, None, cost,
            "0.0.61" if priced else "unpriced", rng.randint(150, 30_000), None,
            "" if priced else "unknown_model", b"{}",
        ))
    return out


def contexts(rng: random.Random) -> list[tuple[object, ...]]:
    """Where calls come from: (project, repo, branch, program, os_user, tags); a project has its repo and team."""
    out: list[tuple[object, ...]] = [(None, None, None, "python3", "dev", None)]
    for project, team in (("acme", "ml"), ("web", "web"), ("data", "ml"), ("infra", "ops"), ("docs", None)):
        for branch in ("main", "dev", "feat/a", "feat/b", "fix/c"):
            for program in ("python3", "node", "claude"):
                tags = None if team is None else f'{{"team":"{team}"}}'
                out.append((project, f"org/{project}", branch, program, "dev", tags))
    return out


def fill(db: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    pool = templates(rng)
    where_from = contexts(rng)
    with Store(db) as store:  # the daemon's schema and migrations
        store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    # Filled as a store of the release before rollups (schema 2), then upgraded in place
    # by opening it: the upgrade is timed, and filling runs at bulk speed.
    conn.executescript("DROP TRIGGER requests_rollup; DROP TRIGGER requests_rollup_update; DROP TRIGGER requests_rollup_delete;"
                       " DROP TABLE request_rollups; DROP TABLE rollup_fill; PRAGMA user_version = 2;")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # a throwaway benchmark file
    conn.execute("PRAGMA cache_size = -262144")
    t0 = time.perf_counter()
    seconds_per_row = DAYS * 86_400 / n
    for first in range(0, n, CHUNK):
        rows = []
        for i in range(first, min(n, first + CHUNK)):
            secs = i * seconds_per_row
            day = FIRST_DAY + timedelta(days=int(secs // 86_400))
            sod = int(secs % 86_400)
            ts = f"{day.isoformat()}T{sod // 3600:02d}:{sod // 60 % 60:02d}:{sod % 60:02d}.000Z"
            t = pool[rng.randrange(len(pool))]
            # A day's calls come from a handful of contexts (what was worked on that day).
            c = where_from[(day.toordinal() * 7 + rng.randrange(5)) % len(where_from)]
            # ids in insertion order keep the primary key an append; synced rows keep the
            # unsynced index empty, as on a machine that has uploaded its backlog.
            rows.append((f"{i:08x}-0000-4000-8000-000000000000", ts, day.isoformat(), *t, *c))
        conn.execute("BEGIN")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
        done = min(n, first + CHUNK)
        rate = done / (time.perf_counter() - t0)
        print(f"  filled {done:,} / {n:,} rows ({rate:,.0f} rows/s)", flush=True)
    conn.execute("UPDATE requests SET synced_at = '2026-04-01T00:00:00Z'")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    t0 = time.perf_counter()
    with Store(db) as store:
        assert store.version >= 3
        opened = time.perf_counter() - t0
        while store.fill_rollups():  # what the daemon's rollups component does, without its pauses
            pass
    print(f"  upgrade to local rollups (schema 3): open {opened:.2f} s, then {n:,} rows added in "
          f"{time.perf_counter() - t0 - opened:.1f} s (in the background, 20,000-row transactions)", flush=True)


def wall(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[2:])} failed: {out.stderr.strip()}")
    return statistics.median(times)


def baseline(db: Path, start: str, end: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        t0 = time.perf_counter()
        conn.execute(
            "SELECT model, count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),"
            " total(cost_usd) FROM requests WHERE day BETWEEN ? AND ? GROUP BY model", (start, end)
        ).fetchall()
        times.append(time.perf_counter() - t0)
        conn.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--raw-limit", type=int, default=1_000_000,
                        help="time the report without rollups only up to this many rows (it holds them all in memory)")
    args = parser.parse_args()
    n, repeats = max(1, args.rows), max(1, args.repeats)
    tmp = Path(tempfile.mkdtemp(prefix="hm-bench-report-"))
    try:
        home = tmp / "hm-home"
        home.mkdir(mode=0o700)
        db = home / "db.sqlite"
        print(f"filling {db.name} with {n:,} rows over {DAYS} days", flush=True)
        fill(db, n)
        start, end = FIRST_DAY.isoformat(), (FIRST_DAY + timedelta(days=DAYS - 1)).isoformat()
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rollups = conn.execute("SELECT count(*) FROM request_rollups").fetchone()[0]
        print(f"{db.stat().st_size / 1e6:,.0f} MB on disk; {rollups:,} rollup rows")
        env = {**os.environ, "HALTON_METER_HOME": str(home)}
        cli = [sys.executable, "-m", "hm_cli.main", "report", "--from", start, "--to", end]
        cli_s = wall(cli, env, repeats)
        by_s = wall([*cli, "--by", "project", "--json"], env, repeats)
        where_s = wall([*cli, "--by", "branch", "--where", "tag:team=ml"], env, repeats)
        start_s = wall([sys.executable, "-c", "import hm_cli.main"], env, repeats)
        base_s = baseline(db, start, end, repeats)
        print(f"report (CLI, table, by model):        {cli_s:.3f} s  (of which Python start + imports {start_s:.3f} s)")
        print(f"report --by project --json:           {by_s:.3f} s")
        print(f"report --by branch --where tag:team=ml: {where_s:.3f} s")
        print(f"baseline SQL GROUP BY over the rows:  {base_s:.3f} s")
        if n <= args.raw_limit:
            from hm_cli.report import build_report

            t0 = time.perf_counter()
            build_report(home, start, end, "model", rollups=False)
            print(f"report without rollups (in process, every row into Python): {time.perf_counter() - t0:.3f} s")
        else:
            print(f"report without rollups: not timed above --raw-limit {args.raw_limit:,} rows")
        print(f"report vs SQL GROUP BY over the rows: {cli_s:.3f} s vs {base_s:.3f} s over {n:,} rows, "
              f"x{base_s / cli_s:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
