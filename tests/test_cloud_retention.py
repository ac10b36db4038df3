"""Cloud retention: a workspace setting for owners and admins, confirmed with the rows that will go,
enforced by a job that exactly one of several server processes runs, in chunks; whoami and totals
say it, and reconcile leaves the deleted days alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, inspect, select

from hm_cloud import retention, rollups, store
from hm_cloud.db import (
    SCHEMA_VERSION,
    audit_log,
    init_schema,
    job_leases,
    make_engine,
    schema_version,
    usage_rollups,
    usage_rows,
)
from hm_cloud.security import hash_password
from tests.support.cloudserver import batch_body, running_cloud, sample_row
from tests.support.postgres import running_postgres

TODAY = date(2026, 11, 29)
NOW = datetime(2026, 11, 29, 0, 30, tzinfo=UTC).timestamp()
PASSWORD = "correct-horse-1"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
        init_schema(eng)
        yield eng
        eng.dispose()
        return
    with running_postgres() as server:
        eng = make_engine(server.create_database("hm_cloud_retention"))
        init_schema(eng)
        yield eng
        eng.dispose()


def workspace(engine: Engine, slug: str) -> str:
    _uid, ws = store.create_user(engine, f"{slug}@example.com", hash_password(PASSWORD), slug, slug, NOW)
    return ws.id


def seed(engine: Engine, workspace_id: str, day: str, n: int) -> set[str]:
    """``n`` rows of ``day`` (the first and last second of it included)."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    times = ["00:00:00.000", "23:59:59.999"] + ["12:00:00.000"] * n
    with engine.begin() as conn:
        conn.execute(usage_rows.insert(), [
            {"workspace_id": workspace_id, "id": rid, "machine_id": "m1", "ts": f"{day}T{times[i]}Z", "day": day,
             "provider": "openai", "model": "gpt-4o-mini", "endpoint": "/v1/chat/completions", "status": 200,
             "stream": False, "cost_usd": "0.001", "cost_nanos": 1_000_000, "price_version": "t",
             "latency_ms": 5, "received_at": NOW, "project": "p" if i % 3 else None}
            for i, rid in enumerate(ids)])
        rollups.rebuild(conn, workspace_id)  # as the ingest would have kept them
    return set(ids)


def rollups_exact(engine: Engine, *workspace_ids: str) -> bool:
    with engine.connect() as conn:
        return all(rollups.mismatches(conn, ws) == [] for ws in workspace_ids)


def ids_of(engine: Engine, workspace_id: str) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(select(usage_rows.c.id).where(usage_rows.c.workspace_id == workspace_id))}


def audit(engine: Engine, workspace_id: str, action: str) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(select(audit_log.c.target).where(
            audit_log.c.workspace_id == workspace_id, audit_log.c.action == action).order_by(audit_log.c.id))]


def test_days_parse_with_a_minimum_of_7() -> None:
    assert retention.parse_days("") is None and retention.parse_days(" keep ") is None
    assert retention.parse_days("7") == 7 and retention.parse_days("365") == 365
    for bad in ("6", "-1", "3.5", "x", "9999999", "40000"):
        with pytest.raises(retention.RetentionError, match="at least 7|whole number"):
            retention.parse_days(bad)


def test_frozen_clock_deletes_exactly_the_older_days_in_chunks(engine: Engine) -> None:
    acme, other = workspace(engine, "acme"), workspace(engine, "other")
    old = seed(engine, acme, "2026-10-29", 1300) | seed(engine, acme, "2026-09-01", 20)  # > one chunk
    kept = seed(engine, acme, "2026-10-30", 5) | seed(engine, acme, "2026-11-29", 5)
    theirs = seed(engine, other, "2026-01-01", 5)  # keeps everything: untouched
    assert retention.rows_before(engine, acme, retention.cutoff(TODAY, 30)) == len(old)
    retention.set_retention(engine, acme, 30, "acme@example.com", "127.0.0.1", NOW)
    pauses: list[float] = []
    ticks = iter(range(10**6))
    # A clock on which every chunk takes 200 ms: the chunks shrink to MIN_CHUNK rows
    # (200, 100, 50, 50, …), a pause between each two.
    done = retention.run_pass(engine, TODAY, NOW, pause=pauses.append, clock=lambda: next(ticks) * 0.2)
    assert done.deleted == {acme: len(old)} and done.chunks == 23 and pauses == [retention.PAUSE_S] * 22
    assert ids_of(engine, acme) == kept and ids_of(engine, other) == theirs
    assert rollups_exact(engine, acme, other)  # each chunk took its rows out of the rollups
    with engine.connect() as conn:
        assert conn.execute(select(func.min(usage_rollups.c.day)).where(
            usage_rollups.c.workspace_id == acme)).scalar_one() == "2026-10-30"
    assert audit(engine, acme, "retention.change") == ["30 days (was keep everything)"]
    assert audit(engine, acme, "retention.delete") == ["1320 rows of days before 2026-10-30 (30-day retention)"]
    assert retention.run_pass(engine, TODAY, NOW).deleted == {}  # nothing more: no audit noise
    assert len(audit(engine, acme, "retention.delete")) == 1
    assert retention.whoami_fields(engine, acme, NOW) == {"retention_days": 30, "retained_from": "2026-10-30",
                                                          "accept_bodies": False}
    assert retention.whoami_fields(engine, other, NOW) == {"retention_days": None, "retained_from": None,
                                                           "accept_bodies": False}


def test_the_lease_lets_one_holder_run_once_per_interval(engine: Engine) -> None:
    assert retention.acquire(engine, "a", NOW, 3600)
    assert not retention.acquire(engine, "b", NOW + 1, 3600)  # held
    retention.finish(engine, "a", NOW + 2)
    assert not retention.acquire(engine, "b", NOW + 3, 3600)  # not due yet
    assert retention.acquire(engine, "b", NOW + 3602, 3600)  # due
    # b dies holding it: after the lease runs out, a takes over (and b's renewal fails)
    assert not retention.acquire(engine, "a", NOW + 3602 + retention.LEASE_SECONDS - 1, 0)
    assert retention.acquire(engine, "a", NOW + 3602 + retention.LEASE_SECONDS + 1, 0)
    assert not retention.renew(engine, "b", NOW + 3700)
    with engine.connect() as conn:
        assert conn.execute(select(job_leases.c.runs)).scalar() == 1


def test_audit_entries_older_than_the_audit_retention_go_in_chunks_whatever_the_workspace_setting(
        engine: Engine) -> None:
    acme, other = workspace(engine, "acme"), workspace(engine, "other")
    retention.set_retention(engine, acme, 7, "acme@example.com", None, NOW)  # shorter: no effect on audit
    first_kept = retention.cutoff(TODAY, 400)
    assert first_kept == "2025-10-25"
    edge = datetime(2025, 10, 25, tzinfo=UTC).timestamp()

    def entries(workspace_id: str, ats: list[float]) -> None:
        with engine.begin() as conn:
            conn.execute(audit_log.insert(), [{"workspace_id": workspace_id, "at": at, "actor": "a@example.com",
                                               "action": "member.role", "target": "x"} for at in ats])

    # Newer first, then older: the job goes by time, not by id.
    entries(acme, [edge, edge + 86400 * 30])
    entries(acme, [edge - 0.001] + [edge - 86400 * d for d in range(1, 301)])
    entries(other, [edge - 86400 * 500] * 150)
    pauses: list[float] = []
    ticks = iter(range(10**6))
    done = retention.run_pass(engine, TODAY, NOW, audit_days=400, pause=pauses.append,
                              clock=lambda: next(ticks) * 0.2)
    # acme's rows: one chunk, nothing to delete. Then 451 entries in chunks of 200, 100, 50, 50, 50
    # and 50 (the last one short), a pause between each two.
    assert done.audit_deleted == {acme: 301, other: 150} and done.deleted == {}
    assert done.chunks == 1 + 6 and pauses == [retention.PAUSE_S] * 5
    with engine.connect() as conn:
        left = conn.execute(select(audit_log.c.at).where(audit_log.c.at < NOW - 3600)).scalars().all()
    assert sorted(left) == [edge, edge + 86400 * 30]  # the first second of the first day kept stays
    assert audit(engine, acme, "audit.delete") == [
        "301 audit entries of days before 2025-10-25 (400-day audit retention)"]
    assert audit(engine, other, "audit.delete") == [
        "150 audit entries of days before 2025-10-25 (400-day audit retention)"]
    assert audit(engine, acme, "retention.change") == ["7 days (was keep everything)"]  # new: kept
    again = retention.run_pass(engine, TODAY, NOW, audit_days=400)
    assert again.audit_deleted == {} and len(audit(engine, acme, "audit.delete")) == 1  # no audit noise
    assert retention.run_pass(engine, TODAY + timedelta(days=10**4), NOW, audit_days=None).audit_deleted == {}


def test_audit_days_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(retention.AUDIT_DAYS_ENV, raising=False)
    assert retention.audit_days() == retention.DEFAULT_AUDIT_DAYS == 400
    assert retention.parse_audit_days("0") is None and retention.parse_audit_days(" 30 ") == 30
    for bad in ("29", "-1", "x", "36501", "1e3", ""):
        with pytest.raises(retention.RetentionError, match="--audit-days"):
            retention.parse_audit_days(bad)
    monkeypatch.setenv(retention.AUDIT_DAYS_ENV, "0")
    assert retention.audit_days() is None
    monkeypatch.setenv(retention.AUDIT_DAYS_ENV, "junk")
    assert retention.audit_days() == 400


def test_a_version_5_database_gains_the_audit_time_index(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX audit_log_at")
        conn.execute(schema_version.update().values(version=5))
    init_schema(engine)
    assert "audit_log_at" in {i["name"] for i in inspect(engine).get_indexes("audit_log")}
    with engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalar_one() == SCHEMA_VERSION >= 6


@pytest.mark.slow
def test_serve_audit_days_reaches_the_pages(tmp_path: Path) -> None:
    with running_cloud(tmp_path, extra_args=("--audit-days", "90")) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        owner = cloud.login_session("owner@example.com", PASSWORD)
        assert "Entries are kept for 90 days" in owner.get("/acme/settings/audit").text
        assert "its entries are kept for 90 days" in owner.get("/acme/settings/retention").text


def old_rows(days_ago: int, n: int) -> list[dict[str, Any]]:
    day = (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y-%m-%d")
    return [sample_row(ts=f"{day}T10:00:00.000Z") for _ in range(n)]


@pytest.mark.slow
def test_an_admin_confirms_with_the_count_a_member_is_refused_and_the_job_deletes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(retention.INTERVAL_ENV, "0.3")
    with running_cloud(tmp_path) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        cloud.create_user("member@example.com", PASSWORD, "acme")  # joins as a member
        paired = cloud.pair("owner@example.com", PASSWORD, "acme")
        api = httpx.Client(base_url=cloud.base_url, headers={"Authorization": f"Bearer {paired['token']}"})
        rows = old_rows(40, 12) + old_rows(3, 4)
        assert api.post("/v1/requests/batch", json=batch_body(rows)).json()["accepted"] == 16
        assert api.get("/v1/whoami").json()["retention_days"] is None

        member = cloud.login_session("member@example.com", PASSWORD)
        assert member.get("/acme/settings/retention").status_code == 403
        owner = cloud.login_session("owner@example.com", PASSWORD)
        page = owner.get("/acme/settings/retention")
        assert page.status_code == 200 and "keep everything" in page.text
        csrf = cloud.csrf(owner, "/acme/settings/retention")
        too_short = owner.post("/acme/settings/retention", data={"csrf_token": csrf, "days": "6"})
        assert too_short.status_code == 400 and "at least 7 days" in too_short.text
        ask = owner.post("/acme/settings/retention", data={"csrf_token": csrf, "days": "30"})
        assert ask.status_code == 200 and "12 rows" in ask.text and "will be deleted" in ask.text
        assert api.get("/v1/whoami").json()["retention_days"] is None  # not before the confirmation
        done = owner.post("/acme/settings/retention", data={"csrf_token": csrf, "days": "30", "confirm": "yes"},
                          follow_redirects=True)
        assert done.status_code == 200 and "30 days" in done.text

        who = api.get("/v1/whoami").json()
        first_kept = (datetime.now(UTC).date() - timedelta(days=30)).isoformat()
        assert who["retention_days"] == 30 and who["retained_from"] == first_kept
        today = datetime.now(UTC).date()
        totals = api.get("/v1/requests/totals", params={"from_date": (today - timedelta(days=60)).isoformat(),
                                                        "to_date": today.isoformat()}).json()
        assert totals["retained_from"] == first_kept
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(d["rows"] for d in totals["days"]) != 4:
            time.sleep(0.2)
            totals = api.get("/v1/requests/totals", params={"from_date": (today - timedelta(days=60)).isoformat(),
                                                            "to_date": today.isoformat()}).json()
        assert sum(d["rows"] for d in totals["days"]) == 4
        audit_page = owner.get("/acme/settings/audit").text
        assert "retention.change" in audit_page and "retention.delete" in audit_page
        assert "12 rows of days before" in audit_page
        assert "kept for 400 days" in audit_page  # the audit retention, shown to admins
        assert "audit log</a> is not affected: its entries are kept for 400 days" in owner.get(
            "/acme/settings/retention").text
        api.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_server_processes_sharing_a_database_run_the_job_once(tmp_path: Path, backend: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(retention.INTERVAL_ENV, "3600")
    monkeypatch.setenv(retention.CHECK_ENV, "0.1")  # each process asks for the lease ten times a second

    def run(db_url: str) -> None:
        engine = make_engine(db_url)
        init_schema(engine)
        acme = workspace(engine, "acme")
        day = (datetime.now(UTC) - timedelta(days=40)).strftime("%Y-%m-%d")
        seed(engine, acme, day, 3000)
        retention.set_retention(engine, acme, 30, "acme@example.com", None, time.time())
        with running_cloud(tmp_path / "a", db_url=db_url), running_cloud(tmp_path / "b", db_url=db_url):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and ids_of(engine, acme):
                time.sleep(0.1)
            assert not ids_of(engine, acme)
            assert rollups_exact(engine, acme)
            time.sleep(1.5)  # ~15 more lease requests from each process
            with engine.connect() as conn:
                runs = conn.execute(select(job_leases.c.runs)).scalar()
                entries = conn.execute(select(func.count()).select_from(audit_log)
                                       .where(audit_log.c.action == "retention.delete")).scalar()
            assert runs == 1 and entries == 1
        engine.dispose()

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'shared.sqlite'}")
    else:
        with running_postgres() as server:
            run(server.create_database("hm_cloud_retention_shared"))
