"""Several server processes on one PostgreSQL database, and the client address behind a proxy.

* ``serve --workers 2``: two processes accept on the one port; pairing,
  uploads and totals work whichever process answers.
* A long-poll held by one process answers the moment another process approves
  the code (PostgreSQL LISTEN/NOTIFY). The database re-check is set to two
  minutes here, so only the notification can answer before the poll's wait.
* ``--forwarded-allow-ips``: limits count the address in X-Forwarded-For only
  when the connection comes from a trusted proxy.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from hm_cloud.db import limiter_slots, usage_rows
from hm_cloud.limits import PAIRING_STARTS_PER_ADDRESS
from tests.support.cloudserver import batch_body, cloud_command, running_cloud, sample_row
from tests.support.postgres import PostgresServer

PASSWORD = "correct-horse-1"


def _workers(pid: int) -> list[int]:
    """The server processes under ``pid`` (not multiprocessing's resource tracker)."""
    found = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [p for p in found if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


@pytest.mark.slow
def test_two_workers_serve_one_postgresql_database(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HALTON_METER_CLOUD_POLL_RECHECK_S", "120")
    db_url = postgres.create_database("hm_workers")
    with running_cloud(tmp_path, db_url=db_url, extra_args=("--workers", "2")) as cloud:
        assert "2 workers" in (tmp_path.glob("cloud-*.out").__next__()).read_text()
        cloud.create_user("w@example.com", PASSWORD, "acme")
        session = cloud.login_session("w@example.com", PASSWORD)
        # Eight codes polled at once, spread over both processes by the kernel;
        # every approval reaches its poll, wherever each landed.
        starts = [cloud.start_pairing(workspace="acme") for _ in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            polls = [pool.submit(cloud.poll, s["device_code"], 20.0) for s in starts]
            for s in starts:
                assert cloud.approve(s["user_code"], "acme", session).status_code == 200
            answers = [p.result() for p in polls]
        assert [a["status_code"] for a in answers] == [200] * 8, answers
        assert len(_workers(cloud.process.pid)) == 2

        def upload(token: str) -> int:
            http = cloud.client(headers={"Authorization": f"Bearer {token}"})
            accepted = 0
            for _ in range(5):
                answer = http.post("/v1/requests/batch", json=batch_body([sample_row() for _ in range(50)]))
                assert answer.status_code == 200, answer.text
                accepted += answer.json()["accepted"]
            return accepted

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            accepted = sum(pool.map(upload, [a["token"] for a in answers]))
        # A worker killed outright is replaced; the other answers meanwhile.
        victim = _workers(cloud.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        accepted += upload(answers[0]["token"])
        for _ in range(200):
            alive = _workers(cloud.process.pid)
            if len(alive) == 2 and victim not in alive:
                break
            time.sleep(0.05)
        assert len(alive) == 2 and victim not in alive
        accepted += upload(answers[1]["token"])
    assert accepted == 10 * 5 * 50
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(usage_rows)).scalar_one() == accepted
    engine.dispose()


def _wait_for_listener(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        for _ in range(200):
            with engine.connect() as conn:
                listening = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN hm_pairing'"
                )).scalar_one()
            if listening:
                return
            time.sleep(0.05)
        raise AssertionError("process A never LISTENed on hm_pairing")
    finally:
        engine.dispose()


@pytest.mark.slow
def test_an_approval_in_another_process_wakes_the_poll_at_once(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HALTON_METER_CLOUD_POLL_RECHECK_S", "120")
    db_url = postgres.create_database("hm_notify")
    with running_cloud(tmp_path / "a", db_url=db_url) as a, running_cloud(tmp_path / "b", db_url=db_url) as b:
        a.create_user("n@example.com", PASSWORD, "acme")
        started = a.start_pairing(workspace="acme")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            session = b.login_session("n@example.com", PASSWORD)
            poll = pool.submit(a.poll, started["device_code"], 20.0)
            _wait_for_listener(db_url)  # the poll started process A's LISTEN; now it waits
            assert b.approve(started["user_code"], "acme", session).status_code == 200
            answer = poll.result()
    # Pending after 20 s would mean the NOTIFY never reached process A.
    assert answer["status_code"] == 200 and answer["token"].startswith("hm_"), answer


def test_limits_count_the_forwarded_address_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    spoofed = {"X-Forwarded-For": "203.0.113.7"}

    def keys(db_url: str) -> set[str]:
        engine = create_engine(db_url)
        with engine.connect() as conn:
            found = set(conn.execute(select(limiter_slots.c.key)).scalars())
        engine.dispose()
        return found

    with running_cloud(tmp_path / "direct") as cloud:
        body = {"machine_id": "6f1c2a4e-8d3b-4c5a-9e7f-0a1b2c3d4e5f", "hostname": "h", "os": "linux",
                "agent_version": "0.2.1", "workspace": None}
        assert cloud.client().post("/v1/pairing/start", json=body, headers=spoofed).status_code == 200
        assert keys(cloud.db_url) == {PAIRING_STARTS_PER_ADDRESS.key("127.0.0.1")}
    with running_cloud(tmp_path / "proxied", extra_args=("--forwarded-allow-ips", "127.0.0.1")) as cloud:
        assert cloud.client().post("/v1/pairing/start", json=body, headers=spoofed).status_code == 200
        assert keys(cloud.db_url) == {PAIRING_STARTS_PER_ADDRESS.key("203.0.113.7")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "0"), "--workers 0: use 1-64"),
        (("--forwarded-allow-ips", "proxy.local"), "is not an IP address or network"),
    ],
)
def test_bad_serve_settings_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    done = subprocess.run(
        cloud_command("serve", "--port", "0", "--db", f"sqlite:///{tmp_path / 'c.sqlite'}", *args),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_failed_batch_does_not_lose_the_connections_staging_table(postgres: PostgresServer) -> None:
    """The COPY staging table made in a transaction that rolls back is made again next time."""
    from sqlalchemy.pool import StaticPool

    from hm_cloud import store
    from hm_cloud.db import devices, init_schema
    from hm_cloud.ingest import batch_values

    engine = create_engine(postgres.create_database("hm_stage"), poolclass=StaticPool)  # one connection
    init_schema(engine)
    _uid, ws = store.create_user(engine, "s@example.com", "x", "stage", "stage", 0.0)
    device = store.AuthedDevice("dev-1", "hash", ws, "machine-1", "host")
    with engine.begin() as conn:
        conn.execute(devices.insert().values(id="dev-1", workspace_id=ws.id, machine_id="machine-1", hostname="h",
                                             os="linux", agent_version="1", paired_at=0.0, rows_synced=0))
    good = batch_values([sample_row() for _ in range(3)], ws.id, "machine-1", 1.0)
    broken = [good[0][:8] + ("not a status",) + good[0][9:]]  # the database refuses it mid-COPY
    with pytest.raises(Exception, match="integer"):
        store.ingest_values(engine, device, broken, 1.0)
    assert store.ingest_values(engine, device, good, 1.0) == (3, 0)
    assert store.ingest_values(engine, device, good, 1.0) == (0, 3)
    engine.dispose()
