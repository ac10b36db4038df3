"""Cloud ingest over HTTP on PostgreSQL (2 workers) and SQLite, each against a bare bulk insert.

For each engine: starts a real ``halton-meter-cloud serve`` on a fresh
database (PostgreSQL from tests/support/postgres.py with ``--workers 2``; a
temp SQLite file with ``--sqlite-workers`` processes, default 2), pairs one
machine, then uploads N unique rows in 1,000-row batches plus 10 % replayed
batches (re-sends of earlier batches, as a daemon does after a crash), mixed
in at random, from ``--concurrency`` uploaders. Bodies are serialized before
the clock starts, so the figures are the server's: HTTP, decoding,
validation, the insert and the rollup upsert (usage_rollups, kept in the
same transaction), commit.

The baseline, in the same run and the same database: the same rows as
prepared tuples inserted by this process into a bare table with the same
columns, primary key and indexes, one transaction per 1,000-row batch, with
the engine's fastest bulk path (PostgreSQL: COPY into a staging table then
INSERT … SELECT ON CONFLICT DO NOTHING, and executemany; SQLite:
executemany INSERT … ON CONFLICT DO NOTHING), through an engine made as the
server makes its own (hm_cloud.db.make_engine: for SQLite, WAL and
synchronous=NORMAL). No HTTP, no validation, and no rollups: the bare path is
only the insert the issue names, so the ratio charges the rollups to the
server.

The machine is shared and its load swings (the bare figure alone varied
2.5x between rounds minutes apart), so each engine runs ``--rounds`` rounds
(default 3), each on a fresh database: the HTTP upload, then right after it
the bare insert, a pair measured under about the same load. The headline
takes the round whose ratio is the median; every round's figures are
printed, and so is the ratio of the best HTTP figure to the best bare one.

Checks: accepted = unique rows sent, duplicates = replayed rows, rows stored
in the database = unique rows, and the rollups equal a fresh aggregate of
the rows (hm_cloud.rollups.mismatches). The last line is both engines'
accepted rows/s and their ratios to their bare bulk inserts.

Run: ``python benchmarks/bench_ingest.py [--rows 50000] [--concurrency 4] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, Index, MetaData, Table, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.cloudserver import running_cloud, sample_row  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402

from hm_cloud import rollups  # noqa: E402
from hm_cloud.db import make_engine, usage_rows, workspaces  # noqa: E402
from hm_cloud.ingest import COLUMNS, row_values  # noqa: E402
from hm_proto.server import parse_row  # noqa: E402

PER_BATCH = 1_000
REPLAY_FRACTION = 0.10
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-pro"),
]
Batch = list[dict[str, object]]


def make_batches(total_rows: int, rng: random.Random) -> list[Batch]:
    batches = []
    for b in range(max(1, total_rows // PER_BATCH)):
        rows = []
        for i in range(PER_BATCH):
            provider, model = MODELS[(b + i) % len(MODELS)]
            day = 1 + (b * PER_BATCH + i) % 28
            rows.append(
                sample_row(
                    id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    ts=f"2026-11-{day:02d}T{i % 24:02d}:{i % 60:02d}:00.000Z",
                    provider=provider,
                    model=model,
                    input_tokens=rng.randint(10, 20_000),
                    output_tokens=rng.randint(1, 4_000),
                    cost_usd=None if i % 50 == 0 else f"{rng.random() / 10:.6f}",
                    latency_ms=rng.randint(100, 9_000),
                    project=f"project-{i % 7}",
                )
            )
        batches.append(rows)
    return batches


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def plan_bodies(batches: list[Batch], rng: random.Random) -> list[tuple[bool, bytes]]:
    """Every batch once, plus 10 % re-sends of a batch sent earlier, mixed in."""
    plan = [(False, i) for i in range(len(batches))]
    for _ in range(int(len(batches) * REPLAY_FRACTION)):
        plan.insert(rng.randint(1, len(plan)), (True, -1))
    bodies: list[tuple[bool, bytes]] = []
    sent: list[int] = []
    for replay, index in plan:
        if replay and sent:
            index = rng.choice(sent)
        elif replay:
            index, replay = 0, False
        sent.append(index)
        bodies.append((replay, orjson.dumps({"batch_id": str(uuid.uuid4()), "rows": batches[index]})))
    return bodies


def bare_table(engine: Engine) -> Table:
    """A table shaped like usage_rows (columns, primary key, indexes), empty."""
    md = MetaData()
    table = Table("bare_rows", md, *[c._copy() for c in usage_rows.columns])
    Index("bare_rows_machine_day", table.c.workspace_id, table.c.machine_id, table.c.day)
    Index("bare_rows_workspace_day", table.c.workspace_id, table.c.day)
    md.drop_all(engine)
    md.create_all(engine)
    return table


def bare_bulk(engine: Engine, batches: list[Batch]) -> tuple[str, float]:
    """(method, rows/s) of the engine's fastest bulk insert of the same rows."""
    tuples = [[row_values(parse_row(r), "ws", "m", 1.0) for r in rows] for rows in batches]
    cols = ", ".join(COLUMNS)
    marks = ", ".join("?" if engine.dialect.name == "sqlite" else "%s" for _ in COLUMNS)
    insert = f"INSERT INTO bare_rows ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"

    def executemany(raw: Any, batch: list[tuple[Any, ...]]) -> None:
        if engine.dialect.name == "sqlite":
            raw.executemany(insert, batch)
        else:
            with raw.cursor() as cur:
                cur.executemany(insert, batch)

    def copy(raw: Any, batch: list[tuple[Any, ...]]) -> None:
        with raw.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE IF NOT EXISTS bare_stage (LIKE bare_rows) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY bare_stage ({cols}) FROM STDIN") as c:
                for v in batch:
                    c.write_row(v)
            cur.execute(f"INSERT INTO bare_rows ({cols}) SELECT {cols} FROM bare_stage ON CONFLICT DO NOTHING")

    methods: dict[str, Callable[[Any, list[tuple[Any, ...]]], None]] = {"executemany": executemany}
    if engine.dialect.name == "postgresql":
        methods["COPY + INSERT … SELECT"] = copy
    best = ("", 0.0)
    for name, insert_batch in methods.items():
        bare_table(engine)
        t0 = time.perf_counter()
        for batch in tuples:
            with engine.begin() as conn:
                raw = conn.connection.driver_connection
                insert_batch(raw, batch)
        speed = len(tuples) * PER_BATCH / (time.perf_counter() - t0)
        print(f"  bare {name}: {speed:,.0f} rows/s")
        best = max(best, (name, speed), key=lambda b: b[1])
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE bare_rows"))
    return best


def run_round(label: str, db_url: str, workers: int, batches: list[Batch],
              bodies: list[tuple[bool, bytes]], concurrency: int, tmp: Path) -> tuple[float, float, bool]:
    """One round on a fresh database: (accepted rows/s over HTTP, bare rows/s, checks passed)."""
    unique_rows = len(batches) * PER_BATCH
    with running_cloud(tmp, db_url=db_url, extra_args=("--workers", str(workers))) as cloud:
        cloud.create_user("bench@example.com", "bench-password", "bench")
        paired = cloud.pair("bench@example.com", "bench-password", "bench", hostname="bench-host")
        headers = {"Authorization": f"Bearer {paired['token']}", "Content-Type": "application/json"}
        clients = [httpx.Client(base_url=cloud.base_url, headers=headers, timeout=120) for _ in range(concurrency)]

        def upload(job: tuple[int, tuple[bool, bytes]]) -> tuple[bool, float, int, int]:
            n, (replay, body) = job
            t = time.perf_counter()
            answer = clients[n % len(clients)].post("/v1/requests/batch", content=body)
            latency = time.perf_counter() - t
            answer.raise_for_status()
            result = answer.json()
            return replay, latency, result["accepted"], result["duplicates"]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(upload, enumerate(bodies)))
        wall = time.perf_counter() - t0
        for c in clients:
            c.close()
    engine = make_engine(db_url)  # the server's own settings (SQLite: WAL, synchronous=NORMAL)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(usage_rows)).scalar_one()
        drifted = sum(len(rollups.mismatches(conn, ws)) for ws in conn.execute(select(workspaces.c.id)).scalars())
    method, baseline = bare_bulk(engine, batches)
    engine.dispose()

    accepted = sum(r[2] for r in results)
    duplicates = sum(r[3] for r in results)
    replayed = sum(1 for r in results if r[0])
    latencies = [r[1] * 1000 for r in results]
    rows_per_s = accepted / wall
    ok = stored == unique_rows == accepted and duplicates == replayed * PER_BATCH and drifted == 0
    print(f"  {len(results)} batches ({replayed} replayed): accepted {accepted:,}, duplicates {duplicates:,}, "
          f"stored {stored:,}, rollup rows differing from the rows {drifted}: {'OK' if ok else 'MISMATCH'}")
    print(f"  batch latency p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms")
    print(f"  over HTTP: {rows_per_s:,.0f} rows/s; bare {method}: {baseline:,.0f} rows/s; "
          f"x{rows_per_s / baseline:.2f}")
    return rows_per_s, baseline, ok


def run_engine(label: str, new_db: Callable[[int], str], workers: int, batches: list[Batch],
               bodies: list[tuple[bool, bytes]], concurrency: int, rounds: int, tmp: Path,
               ) -> tuple[float, float, bool]:
    """The round with the median ratio over ``rounds`` fresh databases: (HTTP rows/s, bare
    rows/s), and whether every round's checks passed."""
    print(f"{label}: {len(bodies)} batches x {PER_BATCH} rows, {workers} worker(s), {concurrency} uploaders, "
          f"{rounds} round(s)", flush=True)
    figures: list[tuple[float, float]] = []
    all_ok = True
    for r in range(rounds):
        http, bare, ok = run_round(label, new_db(r), workers, batches, bodies, concurrency, tmp / f"{label}-{r}")
        figures.append((http, bare))
        all_ok = all_ok and ok
    http, bare = sorted(figures, key=lambda f: f[0] / f[1])[len(figures) // 2]
    best_http, best_bare = max(f[0] for f in figures), max(f[1] for f in figures)
    print(f"  median round: over HTTP {http:,.0f} rows/s; bare {bare:,.0f} rows/s; x{http / bare:.2f} "
          f"(best of each: {best_http:,.0f} vs {best_bare:,.0f}, x{best_http / best_bare:.2f})")
    return http, bare, all_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=4, help="parallel uploaders (one token)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sqlite-workers", type=int, default=2, help="server processes on SQLite")
    parser.add_argument("--rounds", type=int, default=3, help="fresh databases per engine; the best counts")
    parser.add_argument("--only", choices=("PostgreSQL", "SQLite"), help="one engine (no headline line)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    batches = make_batches(args.rows, rng)
    bodies = plan_bodies(batches, rng)
    figures: dict[str, tuple[float, float, bool]] = {}
    with tempfile.TemporaryDirectory(prefix="hm-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        if args.only != "SQLite":
            with running_postgres() as pg:
                figures["PostgreSQL"] = run_engine(
                    "PostgreSQL", lambda r: pg.create_database(f"bench_ingest_{r}"), 2,
                    batches, bodies, args.concurrency, args.rounds, tmp)
        if args.only != "PostgreSQL":
            figures["SQLite"] = run_engine(
                "SQLite", lambda r: f"sqlite:///{tmp / f'cloud-{r}.sqlite'}", args.sqlite_workers,
                batches, bodies, args.concurrency, args.rounds, tmp)
    if args.only:
        return 0 if figures[args.only][2] else 1
    pg_speed, pg_base, pg_ok = figures["PostgreSQL"]
    lite_speed, lite_base, lite_ok = figures["SQLite"]
    print(f"ingest over HTTP with rollups vs bare bulk insert into the same database (median of {args.rounds} "
          f"rounds): PostgreSQL (2 workers) "
          f"{pg_speed:,.0f} vs {pg_base:,.0f} rows/s, x{pg_speed / pg_base:.2f}; "
          f"SQLite ({args.sqlite_workers} workers) {lite_speed:,.0f} vs {lite_base:,.0f} rows/s, "
          f"x{lite_speed / lite_base:.2f}")
    return 0 if pg_ok and lite_ok else 1


if __name__ == "__main__":
    sys.exit(main())
