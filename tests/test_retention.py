"""Local retention: `[retention] days` deletes exactly the rows of older days, never an unsynced
row while cloud sync is on, and gives the space back (incremental vacuum, store schema 4)."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hm_agent.config import ConfigError, parse_config
from hm_agent.retention import Retention, cutoff_day, database_facts
from hm_agent.store import SCHEMA_VERSION, Store, StoredRow
from hm_cli.report import build_report
from tests.support.daemon import daemon_env, run_cli, running_daemon
from tests.support.seed import make_row, store_of_schema

NOW = datetime(2026, 11, 29, 0, 30, tzinfo=UTC)  # the frozen clock: just after midnight UTC


def rows_on(day: str, n: int, seed: int, pad: int = 0) -> list[StoredRow]:
    rng = random.Random(seed)
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    out = []
    for i in range(n):
        # first second and last second of the day included: the cut is by whole UTC days
        ts = start + timedelta(seconds=[0, 86_399][i % 2] if i < 2 else rng.randint(0, 86_399))
        row = make_row(rng, ts)
        out.append(replace(row, row_json=row.row_json + b" " * pad) if pad else row)
    return out


class Cfg:
    def __init__(self, days: int | None, cloud: bool) -> None:
        self.retention_days = days
        self.cloud_enabled = cloud


def calls(home: Path, first: str, last: str) -> int:
    """Calls in `report`, from the rollups (kept by the delete trigger) and from the rows: both agree."""
    fast, slow = (build_report(home, first, last, "model", rollups=r) for r in (True, False))
    assert fast == slow
    return int(fast["total"]["calls"])


def ids(store: Store) -> set[str]:
    return {r[0] for r in store._query("SELECT id FROM requests")}


def test_retention_days_in_config_is_checked_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert parse_config("", path).retention_days is None  # default: keep everything
    assert parse_config("[retention]\ndays = 30\n", path).retention_days == 30
    for bad, why in (("0", "must be 1-36500 days, not 0"), ("-3", "not -3"), ('"30"', "must be an integer"),
                     ("40000", "not 40000"), ("true", "must be an integer")):
        with pytest.raises(ConfigError, match=rf"config.toml:3: retention.days {why}" if "integer" in why
                           else rf"config.toml:3: retention.days .*{why}"):
            parse_config(f"[proxy]\n[retention]\ndays = {bad}\n", path)
    assert not parse_config("[retention]\ndays = 7\n", path).warnings
    assert parse_config("[retention]\nday = 7\n", path).warnings  # a typo is reported, not ignored


def test_cutoff_keeps_today_and_the_days_before() -> None:
    assert cutoff_day(NOW.date(), 30) == "2026-10-30"
    assert cutoff_day(NOW.date(), 1) == "2026-11-28"


def test_frozen_clock_deletes_exactly_the_older_days(tmp_path: Path) -> None:
    """days = 3 on 2026-11-29: 11-26 and later stay (to the last second of 11-25 goes)."""
    with Store(tmp_path / "db.sqlite") as store:
        by_day = {d: rows_on(d, 7, seed=i) for i, d in enumerate(
            ("2026-11-20", "2026-11-25", "2026-11-26", "2026-11-28", "2026-11-29"))}
        for rows in by_day.values():
            store.insert_rows(rows)
        comp = Retention(now=lambda: NOW)
        assert comp.run_once(store, Cfg(None, cloud=False)) == 0 and store.count_rows() == 35
        assert comp.run_once(store, Cfg(3, cloud=False)) == 14
        kept = {r.id for d in ("2026-11-26", "2026-11-28", "2026-11-29") for r in by_day[d]}
        assert ids(store) == kept
        assert comp.health()["deleting_before"] == "2026-11-26" and comp.deleted == 14
        # the report sums (rollups, kept by the delete trigger) agree with the rows left
        assert calls(tmp_path, "2026-11-01", "2026-11-29") == 21
        assert comp.run_once(store, Cfg(3, cloud=False)) == 0  # nothing more, however often it runs


def test_unsynced_rows_are_never_deleted_while_sync_is_on(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as store:
        old = rows_on("2026-10-01", 1200, seed=5)  # more than one batch
        new = rows_on("2026-11-29", 5, seed=6)
        store.insert_rows(old + new)
        synced = [r.id for r in old[:700]]
        store.mark_synced(synced, "2026-10-02T00:00:00Z")
        store.quarantine_rows([old[0].id], 422, "refused")
        comp = Retention(now=lambda: NOW)
        assert comp.run_once(store, Cfg(30, cloud=True)) == 700
        assert ids(store) == {r.id for r in old[700:] + new}
        assert store.count_unsynced() == 505 and store.count_quarantined() == 0
        # once they have synced they go on the next pass
        store.mark_synced([r.id for r in old[700:]], "2026-11-29T00:10:00Z")
        assert comp.run_once(store, Cfg(30, cloud=True)) == 500
        # with sync off (or after disconnect), an unsynced row is the owner's to delete
        store.insert_rows(rows_on("2026-10-02", 3, seed=7))
        assert comp.run_once(store, Cfg(30, cloud=True)) == 0
        assert comp.run_once(store, Cfg(30, cloud=False)) == 3
        assert ids(store) == {r.id for r in new}


def test_deleted_space_goes_back_to_the_file_system(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        store.insert_rows(rows_on("2026-09-01", 3000, seed=8, pad=2000))
        store.insert_rows(rows_on("2026-11-29", 10, seed=9, pad=2000))
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        full = db.stat().st_size
        assert Retention(now=lambda: NOW).run_once(store, Cfg(30, cloud=False)) == 3000
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert int(store._conn.execute("PRAGMA freelist_count").fetchone()[0]) == 0
        assert db.stat().st_size < full / 10, (db.stat().st_size, full)
        assert store.count_rows() == 10


def version_3_store(db: Path, rows: list[StoredRow]) -> None:
    """A database exactly as schema 3 left it: auto_vacuum NONE (SQLite's default)."""
    with store_of_schema(db, 3) as old:
        old.insert_rows(rows)


def test_a_version_3_database_opens_at_once_and_retention_switches_it_to_incremental_vacuum(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    rows = rows_on("2026-09-01", 400, seed=10, pad=1000) + rows_on("2026-11-28", 4, seed=11)
    version_3_store(db, rows)
    with Store(db) as upgraded:
        assert upgraded.version == SCHEMA_VERSION >= 4
        # Opening does not rewrite the file (that held up the daemon's start): still NONE.
        assert int(upgraded._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 0
        assert upgraded.needs_vacuum_switch() and upgraded.reclaim_space() == 0
        assert ids(upgraded) == {r.id for r in rows} and upgraded.rollups_pending() == 0
        retention = Retention(now=lambda: NOW)
        assert retention.run_once(upgraded, Cfg(30, cloud=False)) == 400  # deletes, then the one VACUUM
        assert int(upgraded._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
        assert not upgraded.needs_vacuum_switch() and not upgraded.switch_to_incremental_vacuum()
        assert int(upgraded._conn.execute("PRAGMA freelist_count").fetchone()[0]) == 0
        assert str(retention.health()["vacuum_switch"]).startswith("done in ")
        assert upgraded.integrity_check() == "ok"
        assert calls(tmp_path, "2026-08-01", "2026-11-29") == 4
    with Store(db) as again:  # opening an upgraded database changes nothing
        assert again.version == SCHEMA_VERSION and again.count_rows() == 4


def test_the_switch_in_the_background_loses_no_row_the_writer_was_given(tmp_path: Path) -> None:
    """The VACUUM holds the write lock; the writer thread keeps its rows in memory and retries."""
    import threading

    from hm_agent.capture import CapturedUsage
    from hm_agent.writer import CapturedCall, RowWriter

    db = tmp_path / "db.sqlite"
    version_3_store(db, rows_on("2026-09-01", 3000, seed=14, pad=2000))
    writer = RowWriter(db)
    writer.start()
    background = Store(db)
    switched = threading.Thread(target=background.switch_to_incremental_vacuum)
    switched.start()
    usage = CapturedUsage(provider="openai", model="gpt-4o-mini", host="api.openai.com",
                          endpoint="/v1/chat/completions", status=200, stream=False, input_tokens=10, output_tokens=5)
    submitted = 0
    while switched.is_alive() or submitted < 50:
        writer.submit(CapturedCall(id=f"00000000-0000-4000-8000-{submitted:012d}", ts="2026-11-29T00:10:00.000Z",
                                   usage=usage, latency_ms=5, ttfb_ms=None))
        submitted += 1
        time.sleep(0.001)
    switched.join()
    assert writer.stop(timeout=30)
    assert (writer.written, writer.dropped, writer.quarantined) == (submitted, 0, 0)
    with Store(db) as after:
        assert not after.needs_vacuum_switch() and after.integrity_check() == "ok"
        assert after.count_rows() == 3000 + submitted
    background.close()


def test_a_stop_interrupts_the_switch_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    rows = rows_on("2026-09-01", 2000, seed=15, pad=2000)
    version_3_store(db, rows)
    with Store(db) as stopping:
        stopping.interrupt()  # before the VACUUM began: it never starts
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            stopping.switch_to_incremental_vacuum()
        assert stopping.needs_vacuum_switch()
    with Store(db) as stopping:  # while it runs: it ends there, rolled back, or it had finished
        import threading

        failed: list[BaseException] = []

        def switch() -> None:
            try:
                stopping.switch_to_incremental_vacuum()
            except sqlite3.OperationalError as exc:
                failed.append(exc)

        thread = threading.Thread(target=switch)
        thread.start()
        time.sleep(0.01)
        stopping.interrupt()
        thread.join()
        assert stopping.needs_vacuum_switch() == bool(failed)
    with Store(db) as after:
        assert after.integrity_check() == "ok" and ids(after) == {r.id for r in rows}
        if after.needs_vacuum_switch():  # the next start's pass switches it
            assert after.switch_to_incremental_vacuum() and not after.needs_vacuum_switch()


def test_stopping_the_component_during_the_switch_ends_it_and_loses_nothing(tmp_path: Path) -> None:
    """The daemon's stop cancels the component: the VACUUM is interrupted, not waited for."""
    from types import SimpleNamespace

    import anyio

    db = tmp_path / "db.sqlite"
    rows = rows_on("2026-09-01", 12_000, seed=16, pad=3000)
    version_3_store(db, rows)
    retention = Retention(now=lambda: NOW)
    ctx = SimpleNamespace(home=SimpleNamespace(db=db), config=Cfg(36500, cloud=False))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(retention.run, ctx)
            while retention.vacuum_switch is None and retention.last_run_at is None:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()  # mid-VACUUM ("running"), unless the pass was already done

    anyio.run(main)
    with Store(db) as after:
        assert after.integrity_check() == "ok" and after.count_rows() == len(rows)
        # Interrupted: nothing changed, the next start's pass switches it. Or it had finished.
        assert after.needs_vacuum_switch() == (retention.vacuum_switch is None)


def test_an_upgraded_store_opens_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    """The writer, the CLI and every component open the store while the background VACUUM runs."""
    db = tmp_path / "db.sqlite"
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO write_quarantine (id, reason, row_json, at) VALUES ('x', 'r', x'00', 't')")
    try:
        with Store(db, busy_timeout_ms=50) as opened:
            assert opened.version == SCHEMA_VERSION and opened.count_rows() == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_database_facts_size_and_oldest_row(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    assert database_facts(db) == {"bytes": 0, "oldest": None}
    with Store(db) as store:
        store.insert_rows(rows_on("2026-11-28", 3, seed=12) + rows_on("2026-11-03", 2, seed=13))
        facts = database_facts(db, store)
    assert facts["oldest"] == "2026-11-03T00:00:00.000Z" and facts["bytes"] > 0
    assert database_facts(db)["oldest"] == facts["oldest"]  # read-only, no daemon


def test_status_shows_database_size_oldest_row_and_retention(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text("[retention]\ndays = 45\n")
    with Store(home / "db.sqlite") as store:
        store.insert_rows(rows_on("2026-11-03", 2, seed=14))
    env = daemon_env(home)
    st = json.loads(run_cli(home, "status", "--json", env=env).stdout)
    assert st["database"]["oldest"] == "2026-11-03T00:00:00.000Z"
    assert st["database"]["retention_days"] == 45 and st["database"]["bytes"] > 0
    out = run_cli(home, "status", env=env).stdout
    assert "database" in out and "oldest row 2026-11-03, keeping 45 days" in out


@pytest.mark.slow
def test_the_daemon_deletes_old_rows_and_status_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    today = datetime.now(UTC).date()
    old_day = (today - timedelta(days=40)).isoformat()
    with Store(home / "db.sqlite") as store:
        store.insert_rows(rows_on(old_day, 20, seed=15) + rows_on(today.isoformat(), 3, seed=16))
    with running_daemon(home, extra_config="[retention]\ndays = 30\n") as daemon:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = daemon.status()
            if st["components"].get("retention", {}).get("detail", {}).get("deleted_rows") == 20:
                break
            time.sleep(0.2)
        assert st["components"]["retention"]["detail"]["deleted_rows"] == 20, st["components"]
        assert st["database"]["retention_days"] == 30
        assert st["database"]["oldest"][:10] == today.isoformat()
