"""Cloud retention against ingest: how long a batch insert waits while the retention job deletes.

Seeds a SQLite backend database with ``--rows`` usage rows of an old day for one
workspace with a 30-day retention, then inserts small batches (10 rows, one
transaction each, like ``POST /v1/requests/batch``) in a thread, first alone
(baseline), then while ``hm_cloud.retention.run_pass`` deletes every old row in
its chunks. Prints each phase's insert latency (p50, p99, max) and the job's
longest chunk; the last line is the headline: the longest insert wait during
the job against the baseline (the issue's bound: 100 ms).

    python benchmarks/bench_cloud_retention.py --rows 200000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hm_cloud import retention, store  # noqa: E402
from hm_cloud.db import init_schema, make_engine, usage_rows  # noqa: E402
from hm_cloud.security import hash_password  # noqa: E402


def row(ws: str, day: str) -> dict[str, object]:
    return {"workspace_id": ws, "id": str(uuid.uuid4()), "machine_id": "m1", "ts": f"{day}T12:00:00.000Z",
            "day": day, "provider": "openai", "model": "gpt-4o-mini", "endpoint": "/v1/chat/completions",
            "status": 200, "stream": False, "input_tokens": 100, "output_tokens": 20, "cost_usd": "0.0015",
            "cost_nanos": 1_500_000, "price_version": "t", "latency_ms": 400, "received_at": time.time()}


def ingest(engine: object, ws: str, today: str, stop: threading.Event, waits: list[float]) -> None:
    while not stop.is_set():
        batch = [row(ws, today) for _ in range(10)]
        started = time.perf_counter()
        with engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(usage_rows.insert(), batch)
        waits.append((time.perf_counter() - started) * 1000)
        time.sleep(0.005)


def phase(engine: object, ws: str, today: str, work: object) -> list[float]:
    waits: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=ingest, args=(engine, ws, today, stop, waits))
    thread.start()
    try:
        work()  # type: ignore[operator]
    finally:
        stop.set()
        thread.join()
    return waits


def describe(name: str, waits: list[float]) -> str:
    q = statistics.quantiles(waits, n=100)
    return f"{name:<28} {len(waits):5d} batches   p50 {q[49]:6.2f} ms   p99 {q[98]:7.2f} ms   max {max(waits):7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--baseline-s", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'cloud.sqlite'}")
        init_schema(engine)
        _uid, ws = store.create_user(engine, "a@example.com", hash_password("password-1"), "acme", "acme", time.time())
        now = datetime.now(UTC)
        old, today = (now - timedelta(days=60)).strftime("%Y-%m-%d"), now.strftime("%Y-%m-%d")
        for start in range(0, args.rows, 10_000):
            with engine.begin() as conn:
                conn.execute(usage_rows.insert(), [row(ws.id, old) for _ in range(min(10_000, args.rows - start))])
        retention.set_retention(engine, ws.id, 30, "a@example.com", None, time.time())
        print(f"{args.rows} rows of {old} to delete (30-day retention), SQLite, 10-row batches inserted meanwhile\n")
        base = phase(engine, ws.id, today, lambda: time.sleep(args.baseline_s))
        done: list[retention.Pass] = []
        started = time.monotonic()
        during = phase(engine, ws.id, today,
                       lambda: done.append(retention.run_pass(engine, now.date(), time.time())))
        took = time.monotonic() - started
        print(describe("ingest alone", base))
        print(describe("ingest during retention", during))
        p = done[0]
        print(f"retention: {sum(p.deleted.values())} rows in {took:.1f} s, {p.chunks} chunks, "
              f"longest chunk {p.longest_chunk_s * 1000:.1f} ms")
        print(f"ingest wait during retention vs alone: longest {max(during):.1f} ms vs {max(base):.1f} ms, "
              f"x{max(during) / max(base):.2f} (bound 100 ms; longest chunk {p.longest_chunk_s * 1000:.1f} ms)")
        engine.dispose()


if __name__ == "__main__":
    main()
