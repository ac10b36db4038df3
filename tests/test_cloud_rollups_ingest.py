"""Rollups stay exact under the real ingest: many concurrent, overlapping batches,
replays and duplicate ids within a batch, from several machines and threads, against
``halton-meter-cloud serve`` (PostgreSQL with 2 workers; SQLite with 1 and 2). Afterwards the
rollups equal a fresh aggregate of the rows (rollups.mismatches) and the accepted
and duplicate counts are exact."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from hm_cloud import db, rollups
from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row

PASSWORD = "correct-horse-1"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "sqlite-2-workers", "postgresql"])
def cloud(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    db_url, extra = None, ()
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres").create_database("hm_rollups_ingest")
    if request.param != "sqlite":
        extra = ("--workers", "2")
    with running_cloud(tmp_path_factory.mktemp(f"rollups-{request.param}"), db_url=db_url,
                       extra_args=extra) as server:
        yield server


def varied_row(rng: random.Random) -> dict[str, Any]:
    """A valid row of any kind the rollup measures tell apart, some at the api.md bounds."""
    kind = rng.randrange(8)
    over: dict[str, Any] = {
        "ts": f"2026-11-{rng.randint(1, 6):02d}T{rng.randint(0, 23):02d}:00:00Z",
        "model": rng.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"]),
        "input_tokens": rng.randint(0, 5000), "output_tokens": rng.randint(0, 900),
        "cost_usd": f"{rng.random() / 10:.9f}",
    }
    if rng.random() < 0.6:
        over["project"] = rng.choice(["widgets", "gadgets"])
    if rng.random() < 0.5:
        over["os_user"] = rng.choice(["ana", "bo"])
    if kind == 0:
        over.update(status=rng.choice([429, 500, 503]), cost_usd=None)
    elif kind == 1:
        over.update(cost_usd=None, input_tokens=None, output_tokens=None)  # no usage
    elif kind == 2:
        over.update(cost_usd=None, model="mystery-1")  # no price for the model
    elif kind == 3:
        over.update(input_tokens=10**12, output_tokens=10**12, cache_read_tokens=10**12,
                    cache_write_tokens=10**12, reasoning_tokens=10**12, cost_usd="999999.999999999999")
    elif kind == 4:
        over.update(cache_read_tokens=rng.randint(0, 10**9), reasoning_tokens=rng.randint(0, 10**6))
    return sample_row(**over)


def test_concurrent_overlapping_batches_and_replays_keep_rollups_exact(cloud: CloudServer) -> None:
    slug = f"ws{uuid.uuid4().hex[:8]}"
    cloud.create_user(f"{slug}@example.com", PASSWORD, slug)
    tokens = [cloud.pair(f"{slug}@example.com", PASSWORD, slug, hostname=f"m{i}")["token"] for i in range(3)]
    rng = random.Random(18)
    pool = [varied_row(rng) for _ in range(1200)]
    # 60 batches of 20-150 rows drawn from the pool, so batches overlap, one machine's
    # rows are another's duplicates, and some batches hold the same id twice.
    batches = []
    for _ in range(60):
        rows = rng.sample(pool, rng.randint(20, 150))
        if rng.random() < 0.3:
            rows += rows[: rng.randint(1, 5)]
        batches.append((rng.randrange(len(tokens)), rows))
    sends = batches + [rng.choice(batches) for _ in range(25)]  # replays
    rng.shuffle(sends)
    clients = [httpx.Client(base_url=cloud.base_url, timeout=60, headers={"Authorization": f"Bearer {t}"})
               for t in tokens]

    def send(job: tuple[int, list[dict[str, Any]]]) -> tuple[int, int, int]:
        machine, rows = job
        answer = clients[machine].post("/v1/requests/batch", json=batch_body(rows))
        assert answer.status_code == 200, answer.text
        return len(rows), answer.json()["accepted"], answer.json()["duplicates"]

    try:
        with ThreadPoolExecutor(max_workers=8) as threads:
            answers = list(threads.map(send, sends))
    finally:
        for c in clients:
            c.close()
    sent = {r["id"] for _, rows in sends for r in rows}
    assert sum(a for _, a, _ in answers) == len(sent)
    assert sum(d for _, _, d in answers) == sum(n for n, _, _ in answers) - len(sent)
    engine = create_engine(cloud.db_url)
    try:
        with engine.connect() as conn:
            ws = conn.execute(select(db.workspaces.c.id).where(db.workspaces.c.slug == slug)).scalar_one()
            stored = conn.execute(select(func.count()).select_from(db.usage_rows)
                                  .where(db.usage_rows.c.workspace_id == ws)).scalar_one()
            assert stored == len(sent)
            assert rollups.mismatches(conn, ws) == []
            r = db.usage_rollups.c
            assert conn.execute(select(func.sum(r.calls)).where(r.workspace_id == ws)).scalar_one() == len(sent)
    finally:
        engine.dispose()


def test_retention_deleting_while_batches_arrive_keeps_rollups_exact(cloud: CloudServer) -> None:
    """The retention job deletes old days in chunks (this process, the server's database)
    while machines upload rows of old and recent days, some replayed after their day went."""
    from datetime import UTC, date, datetime

    from hm_cloud import retention
    from hm_cloud.db import make_engine

    slug = f"ret{uuid.uuid4().hex[:8]}"
    cloud.create_user(f"{slug}@example.com", PASSWORD, slug)
    tokens = [cloud.pair(f"{slug}@example.com", PASSWORD, slug, hostname=f"r{i}")["token"] for i in range(2)]
    rng = random.Random(19)
    today = date(2026, 11, 29)
    now = datetime(2026, 11, 29, 1, tzinfo=UTC).timestamp()
    batches = []
    for _ in range(40):
        rows = [varied_row(rng) for _ in range(100)]
        for r in rows:  # half of them from days the 30-day retention deletes
            if rng.random() < 0.5:
                r["ts"] = f"2026-10-{rng.randint(1, 25):02d}T08:00:00Z"
        batches.append((rng.randrange(len(tokens)), rows))
    sends = batches + [rng.choice(batches) for _ in range(15)]
    clients = [httpx.Client(base_url=cloud.base_url, timeout=60, headers={"Authorization": f"Bearer {t}"})
               for t in tokens]
    engine = make_engine(cloud.db_url)
    try:
        with engine.connect() as conn:
            ws = conn.execute(select(db.workspaces.c.id).where(db.workspaces.c.slug == slug)).scalar_one()
        retention.set_retention(engine, ws, 30, None, None, now)
        first_half, second_half = sends[: len(sends) // 2], sends[len(sends) // 2:]
        with ThreadPoolExecutor(max_workers=6) as threads:
            for machine, rows in first_half:
                assert clients[machine].post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
            uploads = threads.map(
                lambda job: clients[job[0]].post("/v1/requests/batch", json=batch_body(job[1])).status_code,
                second_half)
            passes = [retention.run_pass(engine, today, now, pause=lambda _s: None) for _ in range(3)]
            assert set(uploads) == {200}
        assert sum(p.chunks for p in passes) > 1
        with engine.connect() as conn:
            assert rollups.mismatches(conn, ws) == []
            r, u = db.usage_rollups.c, db.usage_rows.c
            stored = conn.execute(select(func.count()).select_from(db.usage_rows).where(u.workspace_id == ws))
            assert conn.execute(select(func.sum(r.calls)).where(r.workspace_id == ws)).scalar_one() == \
                stored.scalar_one()
            assert conn.execute(select(func.count()).select_from(db.usage_rollups)
                                .where(r.workspace_id == ws, r.calls <= 0)).scalar_one() == 0
    finally:
        for c in clients:
            c.close()
        engine.dispose()
