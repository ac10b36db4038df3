"""A fleet of machines uploading at once to the backend on PostgreSQL with 2 workers.

N simulated machines in this one process (default 50; ``--machines 1000`` for
the full fleet), each an hm_proto ``SyncSession`` driven by the async client
(``hm_proto_client.run_sync_async``) over its own connection, each paired
through the real API (``PairingClient`` start and long-poll, approved by a
signed-in owner over HTTP) with its own token, each with ``--rows`` usage
rows (default 200) uploaded in ``--batch``-row batches (default 50).

On the way: 5 % of batches are replayed (sent, the answer thrown away as if
lost, sent again: the second answer counts them as duplicates), 5 % of
answers are delayed by up to 200 ms, and one of the two worker processes is
killed (SIGKILL) when half the rows are in; uvicorn's supervisor starts
another, and the sessions retry with their backoff.

The server runs with ``--forwarded-allow-ips 127.0.0.1`` and each machine
sends its own X-Forwarded-For address, as a fleet behind a reverse proxy
would: the per-address pairing limit (300 starts in 10 minutes) counts each
machine, not the proxy.

Reports rows/s, batch latency p50/p99 (client-observed, successful batches),
and the check against the database: every row of every machine stored once
(0 lost, 0 duplicated), and the rollups equal a fresh aggregate of the rows
(hm_cloud.rollups.mismatches: none). Exit status 1 if the check fails. The last line is
the fleet's rows/s against a plain single-connection httpx uploader of the
same number of rows into the same server, measured in the same run.

Run: ``python benchmarks/bench_fleet.py [--machines 1000] [--rows 200]``.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from sqlalchemy import create_engine, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.cloudserver import CloudServer, running_cloud, sample_row  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402

from hm_cloud import rollups  # noqa: E402
from hm_cloud.db import usage_rows, workspaces  # noqa: E402
from hm_proto import (  # noqa: E402
    Approved,
    BackoffPolicy,
    BatchBuilder,
    CodeIssued,
    PairingClient,
    SyncSession,
    UsageRow,
)
from hm_proto.server import parse_row  # noqa: E402
from hm_proto_client import AsyncCloudClient, SQLiteRowStore, run_pairing_async, run_sync_async  # noqa: E402

PASSWORD = "fleet-password-1"
WORKSPACE = "fleet"


@dataclass
class Counters:
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    replays: int = 0
    delayed: int = 0
    failures: int = 0


class FleetClient:
    """An AsyncCloudClient that adds X-Forwarded-For, replays 5 % of batches and delays 5 % of answers."""

    def __init__(self, inner: AsyncCloudClient, address: str, rng: random.Random, counters: Counters) -> None:
        self.inner, self.address, self.rng, self.counters = inner, address, rng, counters
        self.base_url = inner.base_url

    async def send(self, request: Any, timeout: float | None = None) -> Any:
        request = replace(request, headers=(*request.headers, ("X-Forwarded-For", self.address)))
        is_batch = request.target.startswith("/v1/requests/batch")
        started = time.perf_counter()
        if is_batch and self.rng.random() < 0.05:
            await self.inner.send(request, timeout)  # the answer is "lost": the session never sees it
            self.counters.replays += 1
        answer = await self.inner.send(request, timeout)
        if is_batch:
            status = getattr(answer, "status", 0)
            if status == 200:
                self.counters.latencies.append(time.perf_counter() - started)
                body = orjson.loads(answer.body)
                self.counters.accepted += body["accepted"]
                self.counters.duplicates += body["duplicates"]
            else:
                self.counters.failures += 1
            if self.rng.random() < 0.05:
                self.counters.delayed += 1
                await anyio.sleep(self.rng.random() * 0.2)
        return answer


def fleet_rows(machine: int, count: int, rng: random.Random) -> list[UsageRow]:
    return [
        parse_row(sample_row(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            ts=f"2026-11-{1 + (machine + i) % 28:02d}T{i % 24:02d}:00:00.000Z",
            model=f"model-{(machine + i) % 40}",
            input_tokens=rng.randint(10, 20_000),
            cost_usd=f"{rng.random() / 10:.6f}",
        ))
        for i in range(count)
    ]


def workers(pid: int) -> list[int]:
    found = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [p for p in found if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


async def approve_all(cloud: CloudServer, codes: Any) -> None:
    """The owner approves every code that shows up, over HTTP with the session's CSRF token."""
    session = cloud.login_session("owner@example.com", PASSWORD)
    csrf = cloud.csrf(session)
    async with httpx.AsyncClient(base_url=cloud.base_url, cookies=session.cookies, timeout=60) as http:
        async for user_code in codes:
            answer = await http.post(
                "/v1/pairing/approve", json={"user_code": user_code, "workspace": WORKSPACE, "decision": "approve"},
                headers={"X-CSRF-Token": csrf})
            answer.raise_for_status()


async def pair(base_url: str, n: int, approve: Any, counters: Counters) -> str:
    address = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
    pairing = PairingClient(str(uuid.uuid4()), f"fleet-{n}", "linux", "bench-fleet", WORKSPACE,
                            entropy=secrets.token_bytes)
    async with AsyncCloudClient(base_url, timeout=60) as inner:
        client = FleetClient(inner, address, random.Random(n), counters)

        def on_code(code: CodeIssued) -> None:
            approve.send_nowait(code.user_code)

        outcome = await run_pairing_async(client, pairing, on_code)  # type: ignore[arg-type]
    assert isinstance(outcome, Approved), outcome
    return outcome.token


async def run(args: argparse.Namespace, cloud: CloudServer, db_url: str) -> int:
    rng = random.Random(args.seed)
    counters = Counters()
    print(f"pairing {args.machines} machines through the API ...", flush=True)
    t_pair = time.perf_counter()
    send_code, codes = anyio.create_memory_object_stream[str](args.machines)
    tokens: list[str] = [""] * args.machines
    limiter = anyio.CapacityLimiter(100)

    async def pair_one(n: int) -> None:
        async with limiter:
            tokens[n] = await pair(cloud.base_url, n, send_code, counters)

    async with anyio.create_task_group() as tg:
        tg.start_soon(approve_all, cloud, codes)
        async with anyio.create_task_group() as pairs:
            for n in range(args.machines):
                pairs.start_soon(pair_one, n)
        send_code.close()
    print(f"  paired in {time.perf_counter() - t_pair:.1f} s", flush=True)

    stores = []
    for n in range(args.machines):
        store = SQLiteRowStore()
        for row in fleet_rows(n, args.rows, rng):
            store.add(row)
        stores.append(store)
    expected = {row_id for s in stores for row_id, _ in s.unsynced(10**9)}
    total = args.machines * args.rows
    killed: list[int] = []

    async def killer() -> None:
        while counters.accepted < total // 2:
            await anyio.sleep(0.02)
        victim = workers(cloud.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    async def machine(n: int) -> None:
        async with AsyncCloudClient(cloud.base_url, timeout=60) as inner:
            client = FleetClient(inner, f"10.0.{n // 256 % 256}.{n % 256}", random.Random(1000 + n), counters)
            session = SyncSession(secrets.token_bytes, token=tokens[n],
                                  builder=BatchBuilder(max_rows=args.batch),
                                  backoff=BackoffPolicy(base=0.5, cap=4.0), reconcile_every=10**9)
            await run_sync_async(client, session, stores[n], until_drained=True,  # type: ignore[arg-type]
                                 today=lambda: "2026-11-29")

    print(f"uploading {total:,} rows from {args.machines} machines, {args.batch}-row batches ...", flush=True)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        if not args.no_kill:
            tg.start_soon(killer)
        async with anyio.create_task_group() as fleet:
            for n in range(args.machines):
                fleet.start_soon(machine, n)
        tg.cancel_scope.cancel()
    wall = time.perf_counter() - t0
    for _ in range(100):  # the supervisor replaces a killed worker within a second or so
        if len(workers(cloud.process.pid)) == 2:
            break
        await anyio.sleep(0.1)
    alive = len(workers(cloud.process.pid))
    unsynced = sum(s.count_unsynced() for s in stores)

    engine = create_engine(db_url)
    with engine.connect() as conn:
        stored_ids = [str(r) for r in conn.execute(select(usage_rows.c.id)).scalars()]
        ws_ids = list(conn.execute(select(workspaces.c.id)).scalars())
        drifted = sum(len(rollups.mismatches(conn, ws)) for ws in ws_ids)  # rollups == a fresh aggregate
    engine.dispose()
    stored = set(stored_ids)
    lost = len(expected - stored)
    duplicated = len(stored_ids) - len(stored)
    foreign = len(stored - expected)
    ok = lost == 0 and duplicated == 0 and foreign == 0 and unsynced == 0 and alive == 2 and drifted == 0

    # Baseline: one plain httpx uploader, same rows count, fresh ids, 1 token, same server.
    baseline_rows = [[sample_row(id=str(uuid.uuid4()), model=f"model-{i % 40}") for i in range(args.batch)]
                     for _ in range(total // args.batch)]
    bodies = [orjson.dumps({"batch_id": str(uuid.uuid4()), "rows": b}) for b in baseline_rows]
    headers = {"Authorization": f"Bearer {tokens[0]}", "Content-Type": "application/json"}
    with httpx.Client(base_url=cloud.base_url, headers=headers, timeout=120) as http:
        tb = time.perf_counter()
        for body in bodies:
            http.post("/v1/requests/batch", content=body).raise_for_status()
        base_wall = time.perf_counter() - tb

    lat = sorted(counters.latencies)
    rows_per_s = total / wall
    base_per_s = len(bodies) * args.batch / base_wall
    print(f"machines {args.machines}, rows {total:,}, wall {wall:.2f} s, "
          f"worker killed: {'pid ' + str(killed[0]) if killed else 'no'}, workers alive after: {alive}")
    print(f"batches ok {len(lat):,}, replayed {counters.replays}, answers delayed {counters.delayed}, "
          f"failed attempts {counters.failures}; answers seen: accepted {counters.accepted:,}, "
          f"duplicates {counters.duplicates:,}")
    print(f"batch latency p50 {statistics.median(lat) * 1000:.1f} ms, "
          f"p99 {lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000:.1f} ms")
    print(f"database: {len(stored_ids):,} rows stored, lost {lost}, duplicated {duplicated}, "
          f"unknown {foreign}; unsynced on machines {unsynced}; rollup rows that differ from the rows "
          f"{drifted}: {'OK' if ok else 'MISMATCH'}")
    print(f"fleet of {args.machines} SyncSessions vs one plain httpx uploader, PostgreSQL 2 workers: "
          f"{rows_per_s:,.0f} vs {base_per_s:,.0f} rows/s, x{rows_per_s / base_per_s:.2f}, lost {lost}, "
          f"duplicated {duplicated}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--rows", type=int, default=200, help="rows per machine")
    parser.add_argument("--batch", type=int, default=50, help="rows per batch")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--no-kill", action="store_true", help="keep both workers alive")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hm-bench-fleet-") as tmp, running_postgres() as pg:
        db_url = pg.create_database("bench_fleet")
        extra = ("--workers", "2", "--forwarded-allow-ips", "127.0.0.1")
        with running_cloud(Path(tmp), db_url=db_url, extra_args=extra) as cloud:
            cloud.create_user("owner@example.com", PASSWORD, WORKSPACE)
            return anyio.run(run, args, cloud, db_url)


if __name__ == "__main__":
    sys.exit(main())
