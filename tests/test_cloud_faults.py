"""Cloud sync under faults: a real daemon, a real backend, a fault proxy between them.

Every test starts ``halton-meter-cloud serve`` (temp SQLite), a
``FaultProxy`` in front of it and a daemon in a temp home paired through the
proxy (``cloud connect --no-browser --base-url <proxy>`` + scripted approval),
then seeds rows straight into the daemon's store and breaks the link:

- the backend down for a while: rows queue, DEGRADED with last_error, then all arrive;
- 429 with Retry-After: no retry before Retry-After, not even for `cloud sync`;
- 502/503s: retried with backoff (Retry-After as a floor), then accepted;
- a backlog streams three batches at a time; a 503 and a 400 mid-stream lose,
  duplicate and quarantine nothing;
- a slow backend beyond the client timeout: timeout, retry, no duplicate stored;
- kill -9 of the daemon 20 times over a 10,000-row backlog: the backend holds
  exactly the 10,000 rows (0 lost, 0 stored twice) and every local row is synced.

Nothing is mocked: the faults are real sockets refusing, resetting, answering
429/503 or answering late. Every process is stopped even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cloudserver import CloudServer, running_cloud
from tests.support.daemon import Daemon, start_daemon, stop_or_kill
from tests.support.faultproxy import FaultProxy
from tests.support.seed import pair_daemon, seed_rows

pytestmark = pytest.mark.slow

EMAIL, PASSWORD, WORKSPACE = "ops@example.com", "password123", "acme"


# -- the rig ----------------------------------------------------------------------


@dataclass
class Rig:
    cloud: CloudServer
    proxy: FaultProxy
    daemon: Daemon
    home: Path
    env: dict[str, str]


@contextlib.contextmanager
def rig(tmp_path: Path, backend: str = "asyncio", env: dict[str, str] | None = None) -> Iterator[Rig]:
    """Backend + proxy + a daemon paired through the proxy; all stopped afterwards."""
    env = dict(env or {})
    with running_cloud(tmp_path / "cloud") as cloud, FaultProxy(cloud.base_url) as proxy:
        cloud.create_user(EMAIL, PASSWORD, WORKSPACE)
        d = start_daemon(tmp_path / "home", backend, env=env)
        try:
            pair_daemon(d, cloud, EMAIL, PASSWORD, WORKSPACE, base_url=proxy.base_url)
            r = Rig(cloud, proxy, d, tmp_path / "home", env)
            wait_until(lambda: worker_ready(r.daemon), 20, "the cloud worker to start")
            yield r
        finally:
            stop_or_kill(d)


def worker_ready(d: Daemon) -> bool:
    st = cloud_status(d)
    return st.get("daemon_running") is True and st.get("state") == "ACTIVE" and "consecutive_failures" in st


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def cloud_status(d: Daemon) -> dict[str, Any]:
    out = d.cli("cloud", "status", "--json", timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def local_counts(d: Daemon) -> tuple[int, int]:
    """(rows, rows with synced_at IS NULL) in the daemon's store."""
    conn = sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True, timeout=10)
    try:
        total = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        unsynced = conn.execute("SELECT count(*) FROM requests WHERE synced_at IS NULL").fetchone()[0]
        return int(total), int(unsynced)
    finally:
        conn.close()


def backend_rows(cloud: CloudServer) -> tuple[list[str], int]:
    """(every stored row id, count of distinct ids) in the backend's database."""
    assert cloud.db_url.startswith("sqlite:///")
    conn = sqlite3.connect(f"file:{cloud.db_url[len('sqlite:///'):]}?mode=ro", uri=True, timeout=10)
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM usage_rows")]
        distinct = conn.execute("SELECT count(DISTINCT id) FROM usage_rows").fetchone()[0]
        return ids, int(distinct)
    finally:
        conn.close()


def assert_all_arrived(r: Rig, ids: list[str]) -> None:
    stored, distinct = backend_rows(r.cloud)
    assert len(stored) == distinct == len(ids), (len(stored), distinct, len(ids))
    assert set(stored) == set(ids)
    total, unsynced = local_counts(r.daemon)
    assert (total, unsynced) == (len(ids), 0)


def drained(r: Rig) -> bool:
    return local_counts(r.daemon)[1] == 0


def batch_gaps(proxy: FaultProxy) -> list[float]:
    """Seconds from the end of each batch answer to the start of the next batch."""
    seen = proxy.seen()
    return [b.started - (a.ended or a.started) for a, b in zip(seen, seen[1:], strict=False)]


# -- (a) the backend down for a while ----------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_backend_down_rows_queue_degrade_then_all_arrive(tmp_path: Path, backend: str) -> None:
    with rig(tmp_path, backend) as r:
        r.proxy.down()
        ids = seed_rows(r.daemon.db_path, 1_500)  # more than one batch: ends the flush rest
        # Rows queue, uploads fail, and after 3 failures in a row the state is DEGRADED.
        degraded: dict[str, Any] = {}

        def is_degraded() -> bool:
            degraded.update(cloud_status(r.daemon))
            return degraded["state"] == "DEGRADED"

        wait_until(is_degraded, 30, "DEGRADED while the backend is down")
        assert degraded["consecutive_failures"] >= 3
        assert "cannot connect" in (degraded["last_error"] or ""), degraded["last_error"]
        assert degraded["unsynced_rows"] == 1_500
        assert degraded["next_attempt_at"] is not None
        assert local_counts(r.daemon) == (1_500, 1_500)
        assert backend_rows(r.cloud)[0] == []
        assert r.proxy.count() == 0  # refused at connect: nothing reached the backend

        # Up again: the worker's own backoff retry (no `cloud sync`) uploads everything.
        r.proxy.up()
        wait_until(lambda: drained(r), 60, "the queued rows to upload after the backend is back")
        assert_all_arrived(r, ids)
        assert r.proxy.batch_totals() == (1_500, 0)
        after = cloud_status(r.daemon)
        assert after["state"] == "ACTIVE"
        assert after["last_error"] is None
        assert after["consecutive_failures"] == 0
        assert after["unsynced_rows"] == 0


# -- (b) 429 with Retry-After -------------------------------------------------------------


def test_429_retry_after_is_a_floor_even_for_cloud_sync(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.proxy.fail_next(1, 429, headers={"Retry-After": "2"})
        ids = seed_rows(r.daemon.db_path, 200)
        first = r.daemon.cli("cloud", "sync")  # starts the upload now; reports the 429
        assert first.returncode != 0
        assert "429" in first.stdout + first.stderr
        status = cloud_status(r.daemon)
        assert "429" in (status["last_error"] or "")
        # A second `cloud sync` must not skip the Retry-After.
        r.daemon.cli("cloud", "sync")
        wait_until(lambda: drained(r), 30, "the rows to upload after the 429")
        seen = r.proxy.seen()
        assert [s.status for s in seen] == [429, 200], [(s.status, s.outcome) for s in seen]
        assert batch_gaps(r.proxy)[0] >= 2.0 - 0.05
        assert_all_arrived(r, ids)
        assert r.proxy.batch_totals() == (200, 0)
        assert cloud_status(r.daemon)["last_error"] is None


# -- (c) 502/503: retried with backoff -------------------------------------------------------


def test_503s_are_retried_with_backoff_then_succeed(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.proxy.fail_next(1, 502, headers={})  # no Retry-After: full jitter alone, uniform(0, 1 s)
        r.proxy.fail_next(1, 503)  # Retry-After: 1, a floor on the jittered wait
        r.proxy.fail_next(1, 503, headers={"Retry-After": "3"})  # 3rd failure: DEGRADED for >= 3 s
        ids = seed_rows(r.daemon.db_path, 300)
        states = []
        r.daemon.cli("cloud", "sync")
        deadline = time.monotonic() + 30
        while not drained(r) and time.monotonic() < deadline:
            st = cloud_status(r.daemon)
            states.append((st["state"], st["consecutive_failures"]))
            time.sleep(0.1)
        assert drained(r), "rows not uploaded after the 503s"
        seen = r.proxy.seen()
        assert [s.status for s in seen] == [502, 503, 503, 200], [(s.status, s.outcome) for s in seen]
        gaps = batch_gaps(r.proxy)
        assert gaps[0] <= 1.0 + 0.5, gaps  # attempt 0: uniform(0, 1 s) plus the worker's latency
        assert gaps[1] >= 0.95 and gaps[2] >= 2.95, gaps  # Retry-After honoured
        assert ("DEGRADED", 3) in states, states  # three failures in a row degrade
        assert_all_arrived(r, ids)
        assert r.proxy.batch_totals() == (300, 0)
        after = cloud_status(r.daemon)
        assert (after["state"], after["consecutive_failures"], after["last_error"]) == ("ACTIVE", 0, None)


# -- (c2) a backlog streams three batches at a time; failures mid-stream ----------------------


def most_at_once(seen: list[Any]) -> int:
    """The most requests the proxy had open at one moment."""
    marks = sorted([(s.started, 1) for s in seen] + [(s.ended or math.inf, -1) for s in seen],
                   key=lambda m: (m[0], m[1]))
    at_once = best = 0
    for _, step in marks:
        at_once += step
        best = max(best, at_once)
    return best


def test_a_streamed_backlog_keeps_three_batches_out_and_failures_mid_stream_lose_nothing(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        assert r.daemon.cli("cloud", "pause").returncode == 0
        ids = seed_rows(r.daemon.db_path, 8_000)
        r.proxy.hold(0.3)  # each answer 0.3 s late: the next batch goes out before it comes
        assert r.daemon.cli("cloud", "resume").returncode == 0
        r.proxy.wait_for(lambda: r.proxy.count(status=200) >= 2, 60, "two accepted batches")
        r.proxy.fail_next(1, 503)  # a batch refused while the one after it is on the wire
        r.proxy.wait_for(lambda: r.proxy.count(status=200) >= 5, 60, "the stream going on after the 503")
        r.proxy.fail_next(1, 400)  # refused whole: bisected, never undone by the ack still out
        wait_until(lambda: drained(r), 120, "the backlog to drain")
        seen = r.proxy.seen()
        statuses = [s.status for s in seen]
        assert statuses.count(503) == statuses.count(400) == 1, statuses
        assert most_at_once(seen) == 3, [(s.started, s.ended) for s in seen]  # never more than 3
        assert_all_arrived(r, ids)
        assert r.proxy.batch_totals() == (8_000, 0)  # each row stored once, none sent twice
        after = cloud_status(r.daemon)
        assert (after["quarantined_rows"], after["consecutive_failures"]) == (0, 0)


# -- (d) a slow backend: client timeouts ----------------------------------------------------


def test_slow_backend_times_out_retries_and_stores_once(tmp_path: Path) -> None:
    with rig(tmp_path, env={"HALTON_METER_CLOUD_TIMEOUT": "2"}) as r:
        # 1st batch: never reaches the backend, the connection hangs past the timeout.
        r.proxy.delay_next(1, 4.0, forward=False)
        # 2nd: the backend stores the rows but answers after the client gave up.
        r.proxy.delay_next(1, 4.0, forward=True)
        ids = seed_rows(r.daemon.db_path, 300)
        first = r.daemon.cli("cloud", "sync")
        assert "within 2 s" in first.stdout + first.stderr, first.stdout + first.stderr
        wait_until(lambda: drained(r), 40, "the rows to upload after the timeouts")
        seen = r.proxy.seen()
        assert [s.outcome for s in seen] == ["dropped", "delayed", "forwarded"], [
            (s.outcome, s.status) for s in seen
        ]
        # The 2nd batch was stored; its re-send is answered as 300 duplicates.
        assert (seen[1].accepted, seen[1].duplicates) == (300, 0)
        assert (seen[2].accepted, seen[2].duplicates) == (0, 300)
        assert_all_arrived(r, ids)
        assert cloud_status(r.daemon)["last_error"] is None


# -- (e) kill -9 mid-batch, 20 times, over a 10,000-row backlog ---------------------------


KILLS = 20
BACKLOG = 25_000  # three batches in flight go through ~800 rows a restart: 20 kills must not drain it


def test_kill9_mid_batch_20_times_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random()
    with running_cloud(tmp_path / "cloud") as cloud, FaultProxy(cloud.base_url) as proxy:
        cloud.create_user(EMAIL, PASSWORD, WORKSPACE)
        home = tmp_path / "home"
        d = start_daemon(home)
        try:
            pair_daemon(d, cloud, EMAIL, PASSWORD, WORKSPACE, base_url=proxy.base_url)
            wait_until(lambda: worker_ready(d), 20, "the cloud worker to start")
            stop_or_kill(d)
            ids = seed_rows(home / "db.sqlite", BACKLOG)  # seeded while the daemon is stopped
            # A slow link (each batch answer 0.3 s late) keeps a batch in flight for
            # ~0.4 s. Each restart is killed 0.05-0.5 s after its first batch reaches
            # the proxy: mostly after the backend stored the batch but before the
            # daemon saw the 200 (the case that must not duplicate), sometimes while
            # sending, sometimes after the commit (progress: restarts resume mid-backlog).
            # Once one batch is left, answers come 0.6 s late, so every kill stays mid-batch.
            proxy.hold(0.3)
            phases: list[str] = []
            for _ in range(KILLS):
                if local_counts(d)[1] <= 1_000:
                    proxy.hold(0.6)
                before = proxy.count()
                d = start_daemon(home, write_config=False)
                with contextlib.suppress(TimeoutError):
                    proxy.wait_for(lambda b=before: proxy.count() > b, 15, "a batch from the restarted daemon")
                time.sleep(rng.uniform(0.05, 0.5))
                phases.append(_phase(proxy))
                d.kill9()
            unsynced_after_kills = local_counts(d)[1]
            proxy.hold(0)
            d = start_daemon(home, write_config=False)
            wait_until(lambda: local_counts(d)[1] == 0, 90, "the backlog to drain after the kills")
            final = cloud_status(d)
        finally:
            stop_or_kill(d)

        stored, distinct = backend_rows(cloud)
        accepted, duplicates = proxy.batch_totals()
        report = {
            "kills": len(phases),
            "kill_phases": {p: phases.count(p) for p in sorted(set(phases))},
            "unsynced_after_kills": unsynced_after_kills,
            "batches_seen": proxy.count(),
            "batches_200": proxy.count(status=200),
            "backend_accepted": accepted,
            "backend_duplicates_reported": duplicates,
            "backend_rows": len(stored),
            "lost": len(set(ids) - set(stored)),
            "stored_twice": len(stored) - distinct,
        }
        print("kill -9 report:", json.dumps(report))
        assert len(phases) == KILLS
        # Every kill came while the backlog was being uploaded, most with a batch at the backend.
        assert unsynced_after_kills > 0, "the backlog drained before the kills ended"
        assert phases.count("stored-not-acked") >= KILLS // 2, phases
        assert len(stored) == distinct == BACKLOG
        assert set(stored) == set(ids)  # 0 lost, nothing foreign
        assert accepted == BACKLOG  # the backend stored each row exactly once
        conn = sqlite3.connect(f"file:{home / 'db.sqlite'}?mode=ro", uri=True)
        try:
            assert conn.execute("SELECT count(*) FROM requests WHERE synced_at IS NULL").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == BACKLOG
            assert conn.execute("SELECT count(*) FROM sync_quarantine").fetchone()[0] == 0
        finally:
            conn.close()
        assert final["quarantined_rows"] == 0


def _phase(proxy: FaultProxy) -> str:
    """Where the upload was when the kill came (as the proxy saw it)."""
    live = [s for s in proxy.seen() if s.ended is None]
    if not live:
        return "between-batches"  # the 200 was delivered: committing, or reading the next rows
    if any(s.status == 200 for s in live):
        return "stored-not-acked"  # the backend answered; the answer had not reached the daemon
    return "sending"
