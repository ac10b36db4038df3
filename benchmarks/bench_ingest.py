"""Cloud ingest: loopback load of the backend's batch endpoint on its SQLite default.

Starts a real ``halton-meter-cloud serve`` (subprocess, temp SQLite file,
127.0.0.1), pairs one machine, then uploads 200,000 unique rows in 1,000-row
batches plus 10 % replayed batches (re-sends of earlier batches, as a daemon
does after a crash), mixed in at random. Bodies are serialized before the
clock starts so the figures are the server's: HTTP, validation, insert.

Prints: rows/s accepted (unique rows / wall time), batches/s, p50/p99 batch
latency (client-observed), latency of fresh vs. replayed batches, and checks
that the stored row count equals the unique rows sent (via the totals
endpoint and by counting in the database file). The last line is accepted
rows/s and its ratio to a baseline of one plain ``INSERT`` transaction per
batch into a bare SQLite table in this process (no HTTP, no validation).

Run: ``python benchmarks/bench_ingest.py [--rows 200000] [--concurrency 1]``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.cloudserver import running_cloud, sample_row  # noqa: E402

PER_BATCH = 1_000
REPLAY_FRACTION = 0.10
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-pro"),
]


def make_batches(total_rows: int, rng: random.Random) -> list[list[dict[str, object]]]:
    batches = []
    for b in range(total_rows // PER_BATCH):
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
                )
            )
        batches.append(rows)
    return batches


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def baseline_rows_per_s(batches: list[list[dict[str, object]]], tmp: Path) -> float:
    """One INSERT OR IGNORE transaction per batch into a bare WAL SQLite table."""
    conn = sqlite3.connect(tmp / "baseline.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE r (id TEXT PRIMARY KEY, body TEXT)")
    t0 = time.perf_counter()
    for rows in batches:
        with conn:
            conn.executemany(
                "INSERT OR IGNORE INTO r VALUES (?, ?)", [(r["id"], orjson.dumps(r)) for r in rows]
            )
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(batches) * PER_BATCH / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=1, help="parallel uploaders (one token)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    batches = make_batches(args.rows, rng)
    unique_rows = len(batches) * PER_BATCH
    plan = [(False, i) for i in range(len(batches))]
    for _ in range(int(len(batches) * REPLAY_FRACTION)):
        plan.insert(rng.randint(1, len(plan)), (True, -1))
    # A replay re-sends a batch that went out earlier in the plan.
    bodies: list[tuple[bool, bytes]] = []
    sent: list[int] = []
    for replay, index in plan:
        if replay and sent:
            index = rng.choice(sent)
        elif replay:
            index, replay = 0, False
        sent.append(index)
        body = orjson.dumps({"batch_id": str(uuid.uuid4()), "rows": batches[index]})
        bodies.append((replay, body))

    with tempfile.TemporaryDirectory(prefix="hm-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        with running_cloud(tmp / "cloud") as cloud:
            cloud.create_user("bench@example.com", "bench-password", "bench")
            paired = cloud.pair(
                "bench@example.com", "bench-password", "bench", hostname="bench-host"
            )
            headers = {
                "Authorization": f"Bearer {paired['token']}",
                "Content-Type": "application/json",
            }
            clients = [
                httpx.Client(base_url=cloud.base_url, headers=headers, timeout=120)
                for _ in range(args.concurrency)
            ]

            def upload(job: tuple[int, tuple[bool, bytes]]) -> tuple[bool, float, int, int]:
                n, (replay, body) = job
                t = time.perf_counter()
                answer = clients[n % len(clients)].post("/v1/requests/batch", content=body)
                latency = time.perf_counter() - t
                answer.raise_for_status()
                result = answer.json()
                return replay, latency, result["accepted"], result["duplicates"]

            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                results = list(pool.map(upload, enumerate(bodies)))
            wall = time.perf_counter() - t0

            totals = (
                clients[0]
                .get(
                    "/v1/requests/totals",
                    params={"from_date": "2026-11-01", "to_date": "2026-11-30"},
                )
                .json()["days"]
            )
            for c in clients:
                c.close()
            db_path = cloud.db_url.removeprefix("sqlite:///")
            with sqlite3.connect(db_path) as conn:
                stored = conn.execute("SELECT count(*) FROM usage_rows").fetchone()[0]
        baseline = baseline_rows_per_s(batches, tmp)

    accepted = sum(r[2] for r in results)
    duplicates = sum(r[3] for r in results)
    latencies = [r[1] * 1000 for r in results]
    fresh = [r[1] * 1000 for r in results if not r[0]]
    replayed = [r[1] * 1000 for r in results if r[0]]
    via_totals = sum(d["rows"] for d in totals)
    rows_per_s = accepted / wall

    print(
        f"batches sent:        {len(results)} ({len(replayed)} replayed) x {PER_BATCH} rows, concurrency {args.concurrency}"
    )
    print(f"rows accepted:       {accepted:,} (duplicates {duplicates:,})")
    print(f"wall time:           {wall:.2f} s")
    print(f"rows/s accepted:     {rows_per_s:,.0f}")
    print(f"batches/s:           {len(results) / wall:,.1f}")
    print(
        f"batch latency p50:   {statistics.median(latencies):.1f} ms   p99: {percentile(latencies, 0.99):.1f} ms"
    )
    print(f"  fresh p50/p99:     {statistics.median(fresh):.1f} / {percentile(fresh, 0.99):.1f} ms")
    if replayed:
        print(
            f"  replayed p50/p99:  {statistics.median(replayed):.1f} / {percentile(replayed, 0.99):.1f} ms"
        )
    print(
        f"stored rows:         {stored:,} (totals endpoint: {via_totals:,}; unique sent: {unique_rows:,})"
    )
    ok = stored == unique_rows == accepted == via_totals and duplicates == len(replayed) * PER_BATCH
    print(f"row count check:     {'OK' if ok else 'MISMATCH'}")
    print(f"baseline (bare SQLite INSERT per batch, in-process): {baseline:,.0f} rows/s")
    print(f"backend ingest vs bare SQLite INSERT per batch: {rows_per_s:,.0f} vs {baseline:,.0f} rows/s, "
          f"x{rows_per_s / baseline:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
