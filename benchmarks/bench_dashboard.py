"""The dashboard page and the totals API over many rows in PostgreSQL, with rollups and without.

Generates ``--rows`` usage rows (default 200,000; ``--rows 10000000`` for the
issue's 10 million) in one workspace on PostgreSQL with one server-side
``INSERT … SELECT … FROM generate_series`` per million rows: 200 machines
owned by 50 people, the 90 days up to today, 40 models of 4 providers. Like a
real team, each machine uses a handful of them: 4 models, 3 projects and
calls with none, one OS user (every tenth machine a second one, root); about
1% errors, 0.1% status 0, 0.5% without usage, and 2 of the 40 models have no
price. The rollups are then filled with ``rollups.rebuild`` (one
``INSERT … SELECT … GROUP BY``), and the tables analysed.

Then the real server (``halton-meter-cloud serve``) on that database is timed,
client-observed, one request at a time, ``--repeats`` requests each after one
warm-up:

* the dashboard page ``/<workspace>/`` of a signed-in owner, for its default
  range (the last 30 days) and for all 90 days;
* ``GET /v1/requests/totals`` over the 90 days with one machine's sync token
  (what reconcile asks; about 1/200 of the rows).

Baseline, in the same run and database: the same requests to a second server
started with ``HALTON_METER_CLOUD_ROLLUPS=off`` (every reader sums the rows,
as before rollups), ``--raw-repeats`` requests each. The last line is each
figure's p95 with rollups against without, and the ratio.

Run: ``python benchmarks/bench_dashboard.py [--rows 10000000] [--repeats 20] [--raw-repeats 20]``.
At 10 million rows a page without rollups takes 40-50 s on 2 shared cores:
``--raw-repeats 3`` keeps the run near 25 minutes (generating the rows takes 10).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import delete, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.cloudserver import running_cloud  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402

from hm_cloud import db, rollups  # noqa: E402

PASSWORD = "dashboard-password-1"
MACHINES, DAYS, PEOPLE_COUNT = 200, 90, 50


def machine_id(n: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"m{n}".encode()).hexdigest()))


# g: the row's number; m: its machine; s: its slot (the machine's s-th call), whose
# day d is s % 90 and whose j = s / 90 counts the machine's calls that day. A machine
# has 4 models and 3 projects (and calls with none); on day d it uses 2 of its
# models (k = (d + j % 2) % 4) and 2 of its 4 project choices (p = (d + (j / 2) % 2) % 4, 3 = none).
GENERATE = text("""
INSERT INTO usage_rows (workspace_id, id, machine_id, ts, day, provider, model, endpoint, status, stream,
    input_tokens, output_tokens, cache_read_tokens, cost_usd, cost_nanos, price_version, latency_ms, received_at,
    project, repo, program, os_user)
SELECT :ws, md5('row' || g)::uuid::text, md5('m' || m)::uuid::text,
       to_char(day, 'YYYY-MM-DD') || 'T10:00:00.000Z', to_char(day, 'YYYY-MM-DD'),
       (ARRAY['openai','anthropic','google','mistral'])[1 + model % 4], 'model-' || model,
       '/v1/chat/completions', status, g % 3 = 0,
       CASE WHEN no_usage THEN NULL ELSE 100 + g % 5000 END, CASE WHEN no_usage THEN NULL ELSE 10 + g % 700 END,
       CASE WHEN g % 3 = 0 AND NOT no_usage THEN g % 2000 END,
       CASE WHEN priced THEN '0.0015' END, CASE WHEN priced THEN 1500000 + g % 1000 END,
       'bench', 300 + g % 900, 0,
       CASE WHEN project < 3 THEN 'project-' || ((m + project * 7) % 20) END,
       CASE WHEN project < 3 THEN 'acme/project-' || ((m + project * 7) % 20) END, 'claude',
       CASE WHEN m % 10 = 0 AND (j / 4) % 5 = 0 THEN 'root' ELSE 'user-' || m END
FROM (
    SELECT g, m, day, j, model, project, status, no_usage,
           status BETWEEN 1 AND 399 AND NOT no_usage AND model < 38 AS priced
    FROM (
        SELECT g, m, CAST(:start AS date) + d AS day, j,
               (m * 3 + ((d + j % 2) % 4) * 10) % 40 AS model, (d + (j / 2) % 2) % 4 AS project,
               CASE WHEN g % 1009 = 0 THEN 0 WHEN g % 97 = 0 THEN 500 ELSE 200 END AS status,
               g % 211 = 0 AS no_usage
        FROM (SELECT g, g % 200 AS m, ((g / 200) % 90)::int AS d, g / 200 / 90 AS j
              FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g) AS numbered
    ) AS chosen
) AS rows_of
""")

PEOPLE = text("""
INSERT INTO users (email, password_hash, created_at)
SELECT 'person-' || p || '@example.com', 'x', 0 FROM generate_series(1, :people - 1) AS p
""")
DEVICES = text("""
INSERT INTO devices (id, workspace_id, machine_id, hostname, os, agent_version, paired_at, rows_synced, approved_by)
SELECT md5('d' || m)::uuid::text, :ws, md5('m' || m)::uuid::text, 'host-' || m, 'linux', '0.2.1', 0, 0,
       (SELECT id FROM users WHERE email = 'person-' || (m % (:people - 1) + 1) || '@example.com')
FROM generate_series(1, :machines - 1) AS m
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
    """The nearest-rank 95th percentile (of 20 values the 19th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def generate(db_url: str, rows: int, start: str) -> str:
    """The workspace's id, after filling it with ``rows`` rows from ``start`` and their rollups."""
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        ws = str(conn.execute(text("SELECT id FROM workspaces WHERE slug = 'dash'")).scalar_one())
    with engine.begin() as conn:
        conn.execute(PEOPLE, {"people": PEOPLE_COUNT})
        conn.execute(DEVICES, {"ws": ws, "people": PEOPLE_COUNT, "machines": MACHINES})
    t0 = time.perf_counter()
    step = 1_000_000
    for lo in range(0, rows, step):
        with engine.begin() as conn:
            conn.execute(GENERATE, {"ws": ws, "lo": lo, "hi": min(rows, lo + step) - 1, "start": start})
        print(f"  generated {min(rows, lo + step):,} of {rows:,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
    t1 = time.perf_counter()
    with engine.begin() as conn:
        # What ingest leaves: a day's rollup rows made as its calls arrive, so stored about in day order.
        conn.execute(delete(db.usage_rollups))
        conn.execute(db.usage_rollups.insert().from_select(
            list(db.usage_rollups.columns.keys()), rollups.aggregate(db.usage_rows).order_by(db.usage_rows.c.day)))
        count = conn.execute(text("SELECT count(*) FROM usage_rollups")).scalar_one()
    print(f"  rollups: {count:,} rows from {rows:,} in {time.perf_counter() - t1:.1f} s", flush=True)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    print(f"generated {rows:,} rows and their rollups in {time.perf_counter() - t0:.1f} s", flush=True)
    engine.dispose()
    return ws


def measure(cloud: object, token: str, dates: dict[str, str], repeats: int) -> dict[str, list[float]]:
    from tests.support.cloudserver import CloudServer

    assert isinstance(cloud, CloudServer)
    session = cloud.login_session("owner@example.com", PASSWORD)
    session.timeout = httpx.Timeout(600.0)
    device = cloud.client(headers={"Authorization": f"Bearer {token}"})
    device.timeout = httpx.Timeout(600.0)

    def page(params: dict[str, str]) -> Callable[[], None]:
        def get() -> None:
            answer = session.get("/dash/", params=params)
            assert answer.status_code == 200 and "Cost per day" in answer.text, answer.status_code

        return get

    def totals() -> None:
        answer = device.get("/v1/requests/totals", params=dates)
        assert answer.status_code == 200 and answer.json()["days"], answer.text[:200]

    out = {}
    print(f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
    for name, fn in (("page, last 30 days", page({})), ("page, 90 days", page(dates)), ("totals, 90 days", totals)):
        out[name] = timed(repeats, fn)
        print(f"  {name}: p50 {statistics.median(out[name]):,.0f} ms, p95 {p95(out[name]):,.0f} ms "
              f"({repeats} requests)", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=20, help="requests per figure with rollups")
    parser.add_argument("--raw-repeats", type=int, default=20, help="requests per figure without rollups")
    args = parser.parse_args()
    today = datetime.now(UTC).date()
    start = today - timedelta(days=DAYS - 1)
    dates = {"from_date": start.isoformat(), "to_date": today.isoformat()}
    figures: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hm-bench-dash-") as tmp, running_postgres() as pg:
        db_url = pg.create_database("bench_dashboard")
        with running_cloud(Path(tmp) / "rollups", db_url=db_url) as cloud:
            cloud.create_user("owner@example.com", PASSWORD, "dash")
            token = str(cloud.pair("owner@example.com", PASSWORD, "dash", machine_id=machine_id(0))["token"])
            generate(db_url, args.rows, start.isoformat())
            print("with rollups:", flush=True)
            figures["with"] = measure(cloud, token, dates, args.repeats)
        os.environ["HALTON_METER_CLOUD_ROLLUPS"] = "off"  # the second server sums the rows
        try:
            with running_cloud(Path(tmp) / "rows", db_url=db_url) as cloud:
                print("without rollups (HALTON_METER_CLOUD_ROLLUPS=off):", flush=True)
                figures["without"] = measure(cloud, token, dates, args.raw_repeats)
        finally:
            del os.environ["HALTON_METER_CLOUD_ROLLUPS"]
    parts = []
    for name, values in figures["with"].items():
        now, before = p95(values), p95(figures["without"][name])
        parts.append(f"{name} {now:,.0f} ms vs {before:,.0f} ms (x{before / now:.1f})")
    print(f"p95 over {args.rows:,} rows with rollups vs without: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
