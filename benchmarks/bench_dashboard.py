"""The dashboard page and the totals API over many rows in PostgreSQL, against the bare query.

Generates ``--rows`` usage rows (default 200,000; ``--rows 10000000`` for the
issue's 10 million) in one workspace on PostgreSQL with SQL's
``generate_series``: 200 machines, 90 days, 40 models, 4 providers, 7
projects. Pairs one of the machines through the API. Then, on the real
server, times ``--repeats`` requests each (client-observed, one at a time):

* the dashboard page ``/<workspace>/`` over the 90 days (a signed-in owner);
* ``GET /v1/requests/totals`` over the 90 days (the paired machine's token),
  what reconcile asks.

Baseline, in the same run and database: the bare SQL a per-day total needs,
``SELECT day, count(*), sum(cost_nanos) FROM usage_rows WHERE workspace_id = …
AND day BETWEEN … GROUP BY day``, timed the same way. The backend reads raw
rows today (no rollups yet); the last line is the page's and the totals' p50
and p95 against the bare query's p95.

Run: ``python benchmarks/bench_dashboard.py [--rows 10000000] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.cloudserver import running_cloud  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402

FROM_DATE, TO_DATE = "2026-08-01", "2026-10-29"  # 90 days
PASSWORD = "dashboard-password-1"


def machine_id(n: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"m{n}".encode()).hexdigest()))


GENERATE = text("""
INSERT INTO usage_rows (workspace_id, id, machine_id, ts, day, provider, model, endpoint, status, stream,
    input_tokens, output_tokens, cost_usd, cost_nanos, price_version, latency_ms, received_at, project)
SELECT :ws, md5('row' || g)::uuid::text, md5('m' || (g % 200))::uuid::text,
       to_char(date '2026-08-01' + ((g / 200) % 90)::int, 'YYYY-MM-DD') || 'T10:00:00.000Z',
       to_char(date '2026-08-01' + ((g / 200) % 90)::int, 'YYYY-MM-DD'),
       (ARRAY['openai','anthropic','google','mistral'])[1 + g % 4], 'model-' || (g % 40),
       '/v1/chat/completions', CASE WHEN g % 97 = 0 THEN 500 ELSE 200 END, g % 3 = 0,
       100 + g % 5000, 10 + g % 700, '0.0015', 1500000, 'bench', 300 + g % 900, 0,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'project-' || (g % 7) END
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
""")


def timed(repeats: int, fn: Callable[[], object]) -> list[float]:
    fn()  # warm: the first request pays for the pool and the plan cache
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hm-bench-dash-") as tmp, running_postgres() as pg:
        db_url = pg.create_database("bench_dashboard")
        with running_cloud(Path(tmp), db_url=db_url) as cloud:
            cloud.create_user("owner@example.com", PASSWORD, "dash")
            paired = cloud.pair("owner@example.com", PASSWORD, "dash", machine_id=machine_id(0))
            engine = create_engine(db_url)
            with engine.connect() as conn:
                ws = conn.execute(text("SELECT id FROM workspaces WHERE slug = 'dash'")).scalar_one()
            t0 = time.perf_counter()
            step = 1_000_000
            for lo in range(0, args.rows, step):
                with engine.begin() as conn:
                    conn.execute(GENERATE, {"ws": ws, "lo": lo, "hi": min(args.rows, lo + step) - 1})
                print(f"  generated {min(args.rows, lo + step):,} rows", flush=True)
            with engine.begin() as conn:
                conn.execute(text("ANALYZE usage_rows"))
            print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)

            session = cloud.login_session("owner@example.com", PASSWORD)
            device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
            dates = {"from_date": FROM_DATE, "to_date": TO_DATE}

            def page() -> None:
                answer = session.get("/dash/", params=dates)
                assert answer.status_code == 200, answer.status_code

            def totals() -> None:
                answer = device.get("/v1/requests/totals", params=dates)
                assert answer.status_code == 200 and answer.json()["days"], answer.text[:200]

            def bare() -> None:
                with engine.connect() as conn:
                    conn.execute(text(
                        "SELECT day, count(*), sum(cost_nanos) FROM usage_rows WHERE workspace_id = :ws "
                        "AND day BETWEEN :f AND :t GROUP BY day"), {"ws": ws, "f": FROM_DATE, "t": TO_DATE}).all()

            figures = {name: timed(args.repeats, fn) for name, fn in
                       (("dashboard page", page), ("totals API", totals), ("bare GROUP BY day", bare))}
            engine.dispose()
    for name, values in figures.items():
        print(f"{name}: p50 {statistics.median(values):,.0f} ms, p95 {p95(values):,.0f} ms ({args.repeats} requests)")
    base = p95(figures["bare GROUP BY day"])
    dash, tot = figures["dashboard page"], figures["totals API"]
    print(f"dashboard and totals over {args.rows:,} rows (raw rows, no rollups) vs the bare GROUP BY day "
          f"query: page p50 {statistics.median(dash):,.0f} ms, p95 {p95(dash):,.0f} ms, x{p95(dash) / base:.1f}; "
          f"totals p50 {statistics.median(tot):,.0f} ms, p95 {p95(tot):,.0f} ms, x{p95(tot) / base:.1f}; "
          f"bare p95 {base:,.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
