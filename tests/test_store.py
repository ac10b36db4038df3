"""The SQLite store: schema, idempotent inserts, sync bookkeeping, totals, cloud_state."""

from __future__ import annotations

import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from hm_agent.store import SCHEMA_VERSION, Store, StoredRow, StoreError


def row(i: int, day: str = "2026-11-24", cost: str | None = "0.001", ts_ms: int = 0) -> StoredRow:
    rid = f"00000000-0000-4000-8000-{i:012d}"
    ts = f"{day}T10:00:{i % 60:02d}.{ts_ms:03d}Z"
    return StoredRow(
        id=rid, ts=ts, provider="openai", model="gpt-4o-mini", host="api.openai.com",
        endpoint="/v1/chat/completions", status=200, stream=False, input_tokens=10, output_tokens=2,
        cache_read_tokens=None, cache_write_tokens=None, reasoning_tokens=None, cost_usd=cost,
        price_version="test", latency_ms=5, ttfb_ms=3, flags="", row_json=f'{{"id":"{rid}"}}'.encode(),
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "db.sqlite")
    yield s
    s.close()


def test_created_private_with_wal(store: Store) -> None:
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
    assert cols == [
        "id", "ts", "day", "provider", "model", "host", "endpoint", "status", "stream", "input_tokens",
        "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd",
        "price_version", "latency_ms", "ttfb_ms", "flags", "row_json", "synced_at",
        "project", "repo", "branch", "program", "os_user", "tags",
    ]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(requests)")}
    assert {"requests_unsynced", "requests_day"} <= indexes
    conn.close()


def test_insert_is_idempotent_and_unsynced_oldest_first(store: Store) -> None:
    rows = [row(3), row(1), row(2)]
    assert store.insert_rows(rows) == 3
    assert store.insert_rows([row(1)]) == 0  # same id: ignored
    assert store.count_unsynced() == 3
    got = store.fetch_unsynced(2)
    assert [rid for rid, _ in got] == [row(1).id, row(2).id]
    assert got[0][1] == row(1).row_json
    assert store.mark_synced([row(1).id, row(2).id], "2026-11-24T11:00:00.000Z") == 2
    assert store.count_unsynced() == 1
    assert [rid for rid, _ in store.fetch_unsynced(10)] == [row(3).id]
    store.mark_unsynced([row(1).id])
    assert store.count_unsynced() == 2


def test_totals_by_day_sums_decimals_exactly(store: Store) -> None:
    store.insert_rows([row(1, cost="0.1"), row(2, cost="0.2"), row(3, cost=None),
                       row(4, day="2026-11-25", cost=None), row(5, day="2026-11-26", cost="1")])
    totals = store.totals_by_day("2026-11-24", "2026-11-25")
    assert totals == {"2026-11-24": (3, "0.3"), "2026-11-25": (1, None)}


def test_rows_for_days_includes_synced_rows(store: Store) -> None:
    store.insert_rows([row(1), row(2, day="2026-11-25"), row(3, day="2026-11-26")])
    store.mark_synced([row(1).id], "2026-11-26T00:00:00.000Z")
    ids = [rid for rid, _ in store.rows_for_days(["2026-11-24", "2026-11-25"])]
    assert ids == [row(1).id, row(2).id]
    assert store.rows_for_days([]) == []


def test_cloud_state_set_get_clear(store: Store) -> None:
    assert store.get_cloud_state() is None
    store.set_cloud_state(workspace_id="w1", machine_id="m", api_key_ciphertext=b"\x00x")
    store.set_cloud_state(paused=1, paused_reason="paused_unauthorised")
    state = store.get_cloud_state()
    assert state is not None
    assert (state["workspace_id"], state["paused"], state["paused_reason"]) == ("w1", 1, "paused_unauthorised")
    assert state["api_key_ciphertext"] == b"\x00x"
    with pytest.raises(ValueError, match="unknown cloud_state fields"):
        store.set_cloud_state(nope=1)
    store.clear_cloud_state()
    assert store.get_cloud_state() is None


def test_readonly_reader_beside_writer(store: Store) -> None:
    store.insert_rows([row(1)])
    with Store(store.path, readonly=True) as reader:
        assert reader.count_rows("2026-11-24") == 1
        assert reader.integrity_check() == "ok"
        with pytest.raises(sqlite3.OperationalError):
            reader.insert_rows([row(2)])


def test_locked_database_raises_operational_error_quickly(tmp_path: Path) -> None:
    writer = Store(tmp_path / "db.sqlite", busy_timeout_ms=50)
    locker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            writer.insert_rows([row(1)])
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert writer.insert_rows([row(1)]) == 1
    writer.close()


def test_usage_row_to_json_is_exactly_the_dataclass_as_json() -> None:
    import dataclasses
    import json

    from hm_proto import UsageRow

    row = UsageRow(
        id="00000000-0000-4000-8000-000000000001", ts="2026-11-24T10:00:00.000Z", provider="openai",
        model="gpt-ü", endpoint="/v1/chat/completions", status=200, stream=True, input_tokens=1,
        output_tokens=None, cache_read_tokens=0, cache_write_tokens=None, reasoning_tokens=None,
        cost_usd="0.1", price_version="v", latency_ms=3, ttfb_ms=None,
    )
    canonical = json.dumps(dataclasses.asdict(row), separators=(",", ":"), ensure_ascii=False).encode()
    assert row.to_json() == canonical


# The schema of version 1, exactly as releases up to 0.2.1 created it.
_V1_SCHEMA = """
CREATE TABLE requests (
    id TEXT PRIMARY KEY, ts TEXT NOT NULL, day TEXT NOT NULL, provider TEXT NOT NULL,
    model TEXT NOT NULL, host TEXT NOT NULL, endpoint TEXT NOT NULL, status INTEGER NOT NULL,
    stream INTEGER NOT NULL, input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER,
    cache_write_tokens INTEGER, reasoning_tokens INTEGER, cost_usd TEXT, price_version TEXT NOT NULL,
    latency_ms INTEGER NOT NULL, ttfb_ms INTEGER, flags TEXT NOT NULL DEFAULT '',
    row_json BLOB NOT NULL, synced_at TEXT
);
CREATE INDEX requests_unsynced ON requests(ts) WHERE synced_at IS NULL;
CREATE INDEX requests_day ON requests(day);
CREATE TABLE sync_quarantine (id TEXT PRIMARY KEY, status INTEGER, detail TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE cloud_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), workspace_id TEXT, workspace_slug TEXT, workspace_name TEXT,
    machine_id TEXT, hostname TEXT, api_key_ciphertext BLOB, paired_at TEXT,
    paused INTEGER NOT NULL DEFAULT 0, paused_reason TEXT, last_sync_at TEXT,
    last_reconcile_at TEXT, last_error TEXT
);
PRAGMA user_version = 1;
"""


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    old = sqlite3.connect(db, isolation_level=None)
    old.executescript(_V1_SCHEMA)
    old.execute(
        "INSERT INTO requests (id, ts, day, provider, model, host, endpoint, status, stream, cost_usd,"
        " price_version, latency_ms, row_json) VALUES ('a', '2026-11-24T10:00:00.000Z', '2026-11-24',"
        " 'openai', 'gpt-4o', 'api.openai.com', '/v1/chat/completions', 200, 0, '0.5', 'v', 5, x'7b7d')"
    )
    old.close()
    # report reads a database the daemon has not upgraded yet: attribution reads as NULL
    with Store(db, readonly=True) as ro:
        assert ro.version == 1
        [before] = ro.report_rows("2026-11-24", "2026-11-24")
        assert (before["model"], before["project"], before["tags"]) == ("gpt-4o", None, None)
    with Store(db) as upgraded:
        assert upgraded.version == SCHEMA_VERSION
        assert upgraded.count_unsynced() == 1
        upgraded.insert_rows([replace(row(2), project="acme", tags='{"team":"ml"}')])
        got = sorted((r["model"], r["project"], r["tags"]) for r in upgraded.report_rows("2026-11-24", "2026-11-24"))
        assert got == [("gpt-4o", None, None), ("gpt-4o-mini", "acme", '{"team":"ml"}')]
    with Store(db) as again:  # opening an upgraded database changes nothing
        assert again.version == SCHEMA_VERSION and again.count_rows() == 2


def test_a_database_from_a_newer_release_is_refused_with_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer halton-meter.*upgrade halton-meter"):
        Store(db)


def test_mark_synced_by_rowid_checks_each_rows_id(store: Store) -> None:
    store.insert_rows([row(i) for i in range(1, 1101)])
    rows, rowids, _ = store.fetch_unsynced_rows(1000, None)
    ids = [r[0] for r in rows]
    assert store.mark_synced(ids, "2026-11-24T11:00:00.000Z", rowids) == 1000  # 3 statements of 400 ids
    left = {r[0] for r in store.fetch_unsynced(1000)}
    assert left == {row(i).id for i in range(1, 1101)} - set(ids)
    rows, rowids, _ = store.fetch_unsynced_rows(2, None)
    other = sorted(left - {r[0] for r in rows})[0]
    store._write("DELETE FROM requests WHERE id = ?", [(rows[0][0],)])  # retention deleted it meanwhile
    with store._transaction() as conn:  # another row now holds the first rowid
        conn.execute("UPDATE requests SET rowid = ? WHERE id = ?", (rowids[0], other))
    assert store.mark_synced([r[0] for r in rows], "2026-11-24T11:00:00.000Z", rowids) == 1
    assert other in {r[0] for r in store.fetch_unsynced(1000)}  # not marked by a stale rowid
    with pytest.raises(ValueError, match="one rowid per id"):
        store.mark_synced([row(1).id], "2026-11-24T11:00:00.000Z", [])


def test_fetch_unsynced_after_reads_on_past_the_rows_in_flight(store: Store) -> None:
    store.insert_rows([row(i) for i in range(1, 8)])
    first, cursor = store.fetch_unsynced_after(3, None)
    assert [r[0] for r in first] == [row(i).id for i in (1, 2, 3)]
    second, cursor = store.fetch_unsynced_after(3, cursor)  # 1-3 are in flight, not marked yet
    assert [r[0] for r in second] == [row(i).id for i in (4, 5, 6)]
    store.insert_rows([row(0)])  # written late with an older ts: found when starting over
    third, cursor = store.fetch_unsynced_after(3, cursor)
    assert [r[0] for r in third] == [row(7).id]
    assert store.fetch_unsynced_after(3, cursor) == ([], cursor)
    store.mark_synced([r[0] for r in first + second + third], "2026-11-24T11:00:00.000Z")
    assert [r[0] for r in store.fetch_unsynced_after(3, None)[0]] == [row(0).id]
