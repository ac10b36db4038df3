"""Rollups (usage_rollups, schema 5): a version 4 database is upgraded in place
and its rollups are filled from the rows it holds, exactly (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, select

from hm_cloud import db, rollups

WS = "ws-rollups"


def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres").create_database(f"hm_rollups_{uuid.uuid4().hex[:8]}"))
    return f"sqlite:///{tmp_path / 'cloud.sqlite'}"


def row(n: int, **over: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        workspace_id=WS, id=str(uuid.UUID(int=n)), machine_id=f"m{n % 3}", ts=f"2026-11-2{n % 4}T09:00:00Z",
        day=f"2026-11-2{n % 4}", provider="openai", model=f"gpt-{n % 2}", endpoint="/v1/chat/completions",
        status=200, stream=False, input_tokens=100 + n, output_tokens=n, cache_read_tokens=None,
        cache_write_tokens=None, reasoning_tokens=None, cost_usd="0.5", cost_nanos=500_000_000 + n,
        price_version="v", latency_ms=5, ttfb_ms=None, received_at=1.0, project=("widgets" if n % 2 else None),
        repo=None, branch=None, program=None, os_user=("ana" if n % 5 else None), tags=None)
    values.update(over)
    return values


def held_rows() -> list[dict[str, Any]]:
    """Ordinary rows, and every kind the measures tell apart, at the api.md bounds."""
    rows = [row(n) for n in range(40)]
    rows += [
        row(100, status=500, cost_usd=None, cost_nanos=None),  # an error
        row(101, status=0, cost_usd=None, cost_nanos=None, input_tokens=None, output_tokens=None),
        row(102, cost_usd=None, cost_nanos=None, input_tokens=None, output_tokens=None),  # no usage
        row(103, cost_usd=None, cost_nanos=None, model="mystery-1"),  # no price for the model
        row(104, input_tokens=10**12, output_tokens=10**12, cache_read_tokens=10**12, cost_nanos=10**15),
        row(105, input_tokens=10**12, cache_write_tokens=10**12, reasoning_tokens=10**12, cost_nanos=10**15),
        row(106, input_tokens=-7, cost_nanos=-3),  # stored before the bounds existed
        row(107, project="", os_user=None),  # cannot come from a valid row, but must not merge wrongly
    ]
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def v4_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database as schema 4 left it (no usage_rollups), holding rows."""
    engine = db.make_engine(db_url(request, tmp_path))
    db.init_schema(engine)
    with engine.begin() as conn:
        db.usage_rollups.drop(conn)
        conn.execute(db.usage_rows.insert(), held_rows())
        conn.execute(db.schema_version.update().values(version=4))
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_version_4_database_gains_rollups_that_match_its_rows(v4_engine: Engine) -> None:
    db.init_schema(v4_engine)
    assert "usage_rollups" in inspect(v4_engine).get_table_names()
    with v4_engine.connect() as conn:
        assert conn.execute(select(db.schema_version.c.version)).scalar_one() == db.SCHEMA_VERSION >= 5
        assert rollups.mismatches(conn, WS) == []
        r = db.usage_rollups.c
        total = conn.execute(select(func.sum(r.calls), func.sum(r.errors), func.sum(r.no_usage),
                                    func.sum(r.unknown))).one()
        assert tuple(total) == (48, 2, 1, 1)
        hi, lo = conn.execute(select(func.sum(r.input_tokens_hi), func.sum(r.input_tokens_lo))).one()
        assert hi * rollups.SPLIT + lo == sum(x["input_tokens"] or 0 for x in held_rows())
        blank = conn.execute(select(func.sum(r.calls)).where(r.project == "")).scalar_one()
        assert blank == sum(1 for x in held_rows() if not x["project"])
    db.init_schema(v4_engine)  # again: nothing to do, nothing doubles
    with v4_engine.connect() as conn:
        assert rollups.mismatches(conn, WS) == []


def test_mismatches_names_a_rollup_that_drifted(v4_engine: Engine) -> None:
    db.init_schema(v4_engine)
    with v4_engine.begin() as conn:
        conn.execute(db.usage_rollups.update().where(db.usage_rollups.c.machine_id == "m1").values(
            calls=db.usage_rollups.c.calls + 1))
        assert rollups.mismatches(conn, WS)
        rollups.rebuild(conn, WS)
        assert rollups.mismatches(conn, WS) == []


def test_the_python_aggregate_of_row_tuples_equals_the_sql_aggregate(v4_engine: Engine) -> None:
    """The SQLite ingest upserts rollups.aggregate_values(batch) when every row was new:
    it must give exactly the rows and measures of rollups.aggregate over the same rows."""
    tuples = [tuple(r[c.name] for c in db.usage_rows.columns) for r in held_rows()]
    with v4_engine.connect() as conn:
        sql = {tuple(r[:8]): rollups._normal(tuple(r[8:])) for r in conn.execute(rollups.aggregate(db.usage_rows))}
    mine = {tuple(r[:8]): rollups._normal(tuple(r[8:])) for r in rollups.aggregate_values(tuples)}
    assert mine == sql and len(mine) == len(rollups.aggregate_values(tuples))


def test_the_rollups_command_checks_and_rebuilds(tmp_path: Path) -> None:
    import json
    import subprocess

    from hm_cloud import store
    from tests.support.cloudserver import cloud_command

    url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    engine = db.make_engine(url)
    db.init_schema(engine)
    _uid, ws = store.create_user(engine, "ops@example.com", "x", "acme", "Acme", 1.0)
    with engine.begin() as conn:
        conn.execute(db.usage_rows.insert(), [{**r, "workspace_id": ws.id} for r in held_rows()])
        rollups.rebuild(conn, ws.id)
        conn.execute(db.usage_rollups.update().where(db.usage_rollups.c.machine_id == "m1").values(
            calls=db.usage_rollups.c.calls + 1))  # drifted
    engine.dispose()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cloud_command("rollups", *args, "--db", url), capture_output=True, text=True, timeout=60)

    drifted = cli("--check")
    assert drifted.returncode == 1 and "rows differ" in drifted.stdout and "rollups --rebuild" in drifted.stderr
    assert "checking acme (1/1)" in drifted.stderr
    rebuilt = cli("--rebuild", "--workspace", "acme")
    assert rebuilt.returncode == 0 and "acme:" in rebuilt.stdout and "rebuilt" in rebuilt.stdout
    answer = json.loads(cli("--check", "--json").stdout)
    assert answer["exact"] is True and answer["workspaces"][0]["workspace"] == "acme"
    assert answer["workspaces"][0]["rollup_rows"] > 0 and answer["workspaces"][0]["differ"] == 0
    unknown = cli("--check", "--workspace", "nope")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "check the slug" in unknown.stderr
    neither = subprocess.run(cloud_command("rollups", "--db", url), capture_output=True, text=True, timeout=60)
    assert neither.returncode == 2 and "--check" in neither.stderr


def _batch(ws_id: str, first: int, n: int) -> list[tuple[Any, ...]]:
    return [tuple({**row(i), "workspace_id": ws_id}[c.name] for c in db.usage_rows.columns)
            for i in range(first, first + n)]


def test_sqlite_ingest_near_the_largest_rowid_rebuilds_exactly(tmp_path: Path) -> None:
    """Past the rowid room SQLite may pick new rowids at random: the ingest then rebuilds
    the workspace's rollups from its rows instead of summing the rows above a rowid."""
    from hm_cloud import store

    engine = db.make_engine(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    db.init_schema(engine)
    _uid, ws = store.create_user(engine, "ops@example.com", "x", "acme", "Acme", 1.0)
    device = store.AuthedDevice("dev-1", "hash", ws, "m0", "host")
    try:
        assert store.ingest_values(engine, device, _batch(ws.id, 0, 10), 1.0) == (10, 0)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE usage_rows SET rowid = ? WHERE id = ?",
                                 (2**63 - 1 - 3, str(uuid.UUID(int=0))))
        # a replayed row and new ones: not every row is new, so not the Python sum
        assert store.ingest_values(engine, device, _batch(ws.id, 5, 10), 2.0) == (5, 5)
        with engine.connect() as conn:
            assert rollups.mismatches(conn, ws.id) == []
            assert conn.execute(select(func.sum(db.usage_rollups.c.calls))).scalar_one() == 15
    finally:
        engine.dispose()


def test_deadlocks_and_serialization_failures_are_retried_and_nothing_else() -> None:
    import psycopg
    from sqlalchemy.exc import DBAPIError

    from hm_cloud.store import _retryable

    assert _retryable(psycopg.errors.DeadlockDetected("deadlock detected"))
    assert _retryable(psycopg.errors.SerializationFailure("could not serialize"))
    wrapped = DBAPIError("INSERT …", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
    assert _retryable(wrapped)
    assert not _retryable(psycopg.errors.UniqueViolation("duplicate key"))
    assert not _retryable(ValueError("no"))


def test_the_checkpointer_copies_the_wal_into_the_database_and_stops(tmp_path: Path) -> None:
    """serve's SQLite checkpointer: commits leave frames in the WAL (writers checkpoint
    inline only past db.WAL_AUTOCHECKPOINT_PAGES); the thread copies them all."""
    import threading
    import time

    from hm_cloud import store

    engine = db.make_engine(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    db.init_schema(engine)
    with engine.begin() as conn:
        conn.execute(db.usage_rows.insert(), held_rows())
    path = tmp_path / "cloud.sqlite"
    before = path.stat().st_size  # the rows' pages are still only in the WAL
    stop = store.start_checkpointer(engine, every=0.05)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and path.stat().st_size == before:
            time.sleep(0.05)
        assert path.stat().st_size > before
        with engine.connect() as conn:  # nothing left to copy
            _busy, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        assert copied == frames
    finally:
        stop()
    assert not any(t.name == "hm-cloud-checkpoint" for t in threading.enumerate())
    engine.dispose()
