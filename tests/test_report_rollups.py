"""`report` reads local rollups (store schema 3) and gives exactly what a scan of every row gives.

The rollups are kept by a trigger in the insert's own transaction; a row their
integer sums cannot hold exactly (more than 12 decimals, a damaged value)
sends `report` back to the rows of its range.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hm_agent.store import SCHEMA_VERSION, Store, StoredRow
from hm_cli.report import build_report, collect
from tests.support.daemon import running_daemon
from tests.support.seed import make_row

DAYS = ("2026-11-20", "2026-11-21", "2026-11-22")
BY = ("model", "provider", "day", "host", "project", "repo", "branch", "program", "user", "tag:team")


def varied_rows(n: int, seed: int = 3) -> list[StoredRow]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        day = DAYS[i % len(DAYS)]
        row = make_row(rng, datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(seconds=i))
        flags = rng.choice(["", "usage_missing", "incomplete usage_missing", "unknown_model", row.flags])
        cost = rng.choice([row.cost_usd, row.cost_usd, None, "0", "12", "1.50", "0.000000000001", "999999.5"])
        rows.append(replace(
            row, flags=flags, cost_usd=cost, status=rng.choice([200, 200, 0, 429, 500]),
            project=rng.choice([None, "acme", "web"]), repo=rng.choice([None, "acme/api"]),
            branch=rng.choice([None, "main", "feat/x"]), program=rng.choice([None, "python3"]),
            os_user=rng.choice([None, "dev"]), tags=rng.choice([None, '{"team":"ml"}', '{"team":"ops","x":1}']),
        ))
    return rows


def both(home: Path, by: str, where: list[tuple[str, str | None]] | None = None) -> tuple[dict, dict]:
    """What report shows, from the rollups and from every row: --json, per-day costs, previous period."""
    def view(rollups: bool) -> dict:
        spend = collect(home, DAYS[1], DAYS[-1], by, where, rollups=rollups)  # DAYS[0] is the previous period
        return {"json": spend.report(), "per_day": [(g.key, g.per_day) for g in [*spend.groups, spend.total]],
                "previous": spend.previous and spend.previous.to_dict(by),
                "whole": build_report(home, DAYS[0], DAYS[-1], by, where, rollups=rollups)}
    return view(True), view(False)


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("rollups") / "db.sqlite"
    rows = varied_rows(3000)
    with Store(db) as store:
        for start in range(0, len(rows), 500):  # several transactions, duplicates ignored
            store.insert_rows(rows[start:start + 500])
            store.insert_rows(rows[start:start + 10])
    return db


@pytest.fixture
def home(tmp_path: Path, seeded_db: Path) -> Path:
    home = tmp_path / "hm-home"
    home.mkdir(mode=0o700)
    shutil.copy(seeded_db, home / "db.sqlite")
    return home


@pytest.mark.parametrize("by", BY)
def test_rollups_give_exactly_the_row_scan(home: Path, by: str) -> None:
    with Store(home / "db.sqlite", readonly=True) as store:
        assert store.report_rollups(DAYS[0], DAYS[-1])  # the fast path is taken
    fast, slow = both(home, by)
    assert fast == slow
    assert fast["whole"]["total"]["calls"] == 3000 and fast["previous"]["calls"] == 1000


def test_rollups_with_where_filters(home: Path) -> None:
    for where in ([("project", "acme")], [("project", None), ("tag:team", "ml")], [("user", "dev")]):
        fast, slow = both(home, "model", where)
        assert fast == slow and fast["whole"]["total"]["calls"] > 0


def test_a_row_the_sums_cannot_hold_sends_report_to_the_rows(home: Path) -> None:
    base = varied_rows(1)[0]
    with Store(home / "db.sqlite") as store:
        store.insert_rows([replace(base, id="thirteen-decimals", cost_usd="0.0000000000001")])
        assert store.report_rollups(DAYS[0], DAYS[-1]) is None
        assert store.report_rollups("2026-11-23", "2026-11-23") == []  # other days stay fast
    fast, slow = both(home, "model")
    assert fast == slow


def test_a_damaged_value_still_fails_in_one_line(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = sqlite3.connect(home / "db.sqlite")
    conn.execute("UPDATE requests SET input_tokens = 'lots' WHERE rowid = 1")  # the rollup keeps its sum
    conn.execute("INSERT INTO requests (id, ts, day, provider, model, host, endpoint, status, stream,"
                 " input_tokens, price_version, latency_ms, row_json) VALUES ('bad', ?, ?, 'openai', 'x',"
                 " 'h', '/e', 200, 0, 'lots', 'v', 1, x'7b7d')", (DAYS[0] + "T01:00:00.000Z", DAYS[0]))
    conn.commit()
    conn.close()
    with pytest.raises(SystemExit):
        build_report(home, DAYS[0], DAYS[-1], "model")
    assert capsys.readouterr().err.count("\n") == 1


def version_2_store(home: Path, n: int) -> Path:
    """A db.sqlite as the release before rollups left it, with n rows."""
    db = home / "db.sqlite"
    home.mkdir(mode=0o700)
    with Store(db) as store:
        store.insert_rows(varied_rows(n))
    conn = sqlite3.connect(db)
    conn.executescript("DROP TRIGGER requests_rollup; DROP TRIGGER requests_rollup_update; DROP TRIGGER requests_rollup_delete;"
                       " DROP TABLE request_rollups; DROP TABLE rollup_fill; PRAGMA user_version = 2;")
    conn.close()
    return db


def test_a_version_2_database_gets_its_rollups_at_upgrade(tmp_path: Path) -> None:
    db = version_2_store(tmp_path / "hm-home", 600)
    with Store(db, readonly=True) as old:
        assert old.version == 2 and old.report_rollups(DAYS[0], DAYS[-1]) is None
    with Store(db) as upgraded:  # quick: the older rows are added afterwards, a chunk at a time
        assert upgraded.version == SCHEMA_VERSION and upgraded.rollups_pending() == 600
        assert upgraded.report_rollups(DAYS[0], DAYS[-1]) is None  # until then report reads the rows
        rows = varied_rows(700)
        upgraded.insert_rows(rows[600:650])  # written since the upgrade: counted at once
        conn = sqlite3.connect(db)
        conn.execute("UPDATE requests SET cost_usd = '0.5' WHERE rowid IN (5, 590)")  # not filled yet
        conn.execute("DELETE FROM requests WHERE rowid = 7")
        conn.commit()
        conn.close()
        assert upgraded.fill_rollups(250) == 350
        conn = sqlite3.connect(db)
        conn.execute("UPDATE requests SET cost_usd = '0.25' WHERE rowid IN (6, 591)")  # filled / not yet
        conn.commit()
        conn.close()
        upgraded.insert_rows(rows[650:])
        while upgraded.fill_rollups(250):
            pass
        assert upgraded.rollups_pending() == 0
        assert upgraded.report_rollups(DAYS[0], DAYS[-1]) is not None
    for by in ("model", "tag:team", "day"):
        fast, slow = both(db.parent, by)
        assert fast == slow and fast["whole"]["total"]["calls"] == 699


def test_repricing_and_deleting_rows_keep_the_rollups_exact(home: Path) -> None:
    conn = sqlite3.connect(home / "db.sqlite")
    conn.execute("UPDATE requests SET cost_usd = '0.25', flags = '' WHERE cost_usd IS NULL AND status = 200")
    conn.execute("UPDATE requests SET project = 'moved', day = ? WHERE rowid % 7 = 0", (DAYS[2],))
    conn.execute("UPDATE requests SET synced_at = 'now'")  # not watched: rollups untouched
    conn.execute("DELETE FROM requests WHERE rowid % 5 = 0")
    conn.commit()
    conn.close()
    with Store(home / "db.sqlite", readonly=True) as store:
        assert store.report_rollups(DAYS[0], DAYS[-1]) is not None
    for by in ("model", "project", "day"):
        fast, slow = both(home, by)
        assert fast == slow


@pytest.mark.slow
def test_the_daemon_fills_the_rollups_of_an_upgraded_store(tmp_path: Path) -> None:
    home = tmp_path / "hm-home"
    version_2_store(home, 900)
    with running_daemon(home) as daemon:
        deadline = time.monotonic() + 60
        while True:
            with Store(daemon.db_path, readonly=True) as store:
                if store.version >= 3 and not store.rollups_pending():
                    break
            assert time.monotonic() < deadline, "the rollups component did not fill the rollups"
            time.sleep(0.1)
    fast, slow = both(home, "model")
    assert fast == slow and fast["whole"]["total"]["calls"] == 900
