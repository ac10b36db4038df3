"""The guess limits under concurrency and across processes, and logins that cannot starve the API.

Issue 10, items 4-7. Each test failed on the backend before the fix: the
limits were in process memory and checked *after* argon2 or the code lookup,
so concurrent attempts all passed, every process had its own allowance, and
a login flood took every worker thread.
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from hm_cloud.db import init_schema, make_engine
from hm_cloud.limits import Limit, Reservation, reserve
from hm_proto.server import USER_CODE_ALPHABET
from tests.support.cloudserver import CloudServer, running_cloud
from tests.support.latency import latency_probe
from tests.support.postgres import PostgresServer

PASSWORD = "correct-horse-1"


def _db_url(request: pytest.FixtureRequest, tmp_path: Path, engine: str) -> str:
    if engine == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        return pg.create_database(f"limits_{secrets.token_hex(4)}")
    return f"sqlite:///{tmp_path / 'shared.sqlite'}"


def _random_code() -> str:
    code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    return f"{code[:4]}-{code[4:]}"


def _from(server: CloudServer, address: str, **kwargs: object) -> httpx.Client:
    """A client on ``server`` whose connections come from ``address`` (127.0.0.0/8)."""
    return server.client(transport=httpx.HTTPTransport(local_address=address), **kwargs)  # type: ignore[arg-type]


def _login(server: CloudServer, email: str, address: str = "127.0.0.1") -> httpx.Client:
    session = _from(server, address, limits=httpx.Limits(max_connections=200))
    csrf = server.csrf(session, "/login")
    answer = session.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf})
    assert answer.status_code == 303, answer.text[:300]
    return session


def _approve(server: CloudServer, session: httpx.Client, csrf: str, code: str, ws: str) -> int:
    return session.post(
        "/v1/pairing/approve",
        json={"user_code": code, "workspace": ws},
        headers={"X-CSRF-Token": csrf},
    ).status_code


# -- the reservation itself is atomic on both engines -------------------------------------


@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"])
def test_concurrent_reservations_never_pass_the_limit(
    request: pytest.FixtureRequest, tmp_path: Path, engine_name: str
) -> None:
    engine = make_engine(_db_url(request, tmp_path, engine_name))
    init_schema(engine)
    limit = Limit("test", 10, 600.0)
    barrier = threading.Barrier(40)

    def attempt(_: int) -> bool:
        barrier.wait()
        return isinstance(reserve(engine, [(limit, "one-account")], time.time()), Reservation)

    with ThreadPoolExecutor(40) as pool:
        granted = sum(pool.map(attempt, range(40)))
    engine.dispose()
    assert granted == 10


# -- item 4: wrong passwords are counted before argon2 runs ---------------------------------


def test_100_concurrent_logins_for_one_account_check_at_most_10(tmp_path: Path) -> None:
    with running_cloud(tmp_path) as server:
        server.create_user("victim@example.com", PASSWORD, "victim")
        http = server.client(limits=httpx.Limits(max_connections=200))
        csrf = server.csrf(http, "/login")
        passwords = [f"wrong-{i:03d}-pass" for i in range(99)] + [PASSWORD]

        def attempt(password: str) -> int:
            form = {"email": "victim@example.com", "password": password, "csrf_token": csrf}
            return http.post("/login", data=form).status_code

        with ThreadPoolExecutor(100) as pool:
            statuses = Counter(pool.map(attempt, passwords))
        assert set(statuses) <= {400, 429, 303}, statuses
        assert statuses[400] + statuses[303] <= 10, statuses  # checked: at most the limit
        assert statuses[429] >= 90, statuses


# -- item 5: wrong pairing codes are counted before the lookup --------------------------------


def test_1000_concurrent_wrong_codes_check_at_most_10(tmp_path: Path) -> None:
    with running_cloud(tmp_path) as server:
        server.create_user("guesser@example.com", PASSWORD, "guessco")
        session = _login(server, "guesser@example.com")
        csrf = server.csrf(session)
        with ThreadPoolExecutor(100) as pool:
            statuses = Counter(
                pool.map(lambda _: _approve(server, session, csrf, _random_code(), "guessco"), range(1000))
            )
        assert statuses[404] <= 10, statuses
        assert statuses[429] == 1000 - statuses[404], statuses


# -- item 6: limits live in the database: shared by processes, kept across restarts ------------


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"])
def test_two_server_processes_share_one_allowance(
    request: pytest.FixtureRequest, tmp_path: Path, engine_name: str
) -> None:
    db_url = _db_url(request, tmp_path, engine_name)
    with ExitStack() as stack:
        a = stack.enter_context(running_cloud(tmp_path / "a", db_url=db_url))
        b = stack.enter_context(running_cloud(tmp_path / "b", db_url=db_url))
        a.create_user("shared@example.com", PASSWORD, "shared")

        # Wrong codes from one account, concurrently, half to each process.
        sessions = [(a, _login(a, "shared@example.com")), (b, _login(b, "shared@example.com"))]
        csrfs = [server.csrf(s) for server, s in sessions]

        def guess(i: int) -> int:
            server, session = sessions[i % 2]
            return _approve(server, session, csrfs[i % 2], _random_code(), "shared")

        with ThreadPoolExecutor(50) as pool:
            statuses = Counter(pool.map(guess, range(200)))
        assert statuses[404] == 10, statuses  # one allowance of 10, not 10 per process
        assert statuses[429] == 190, statuses

        # Wrong passwords, one at a time, alternating processes: 10 in all, then 429.
        answers = []
        for i in range(12):
            server = (a, b)[i % 2]
            client = server.client()
            form = {"email": "shared@example.com", "password": "not-it-at-all", "csrf_token": server.csrf(client, "/login")}
            answers.append(client.post("/login", data=form).status_code)
        assert answers == [400] * 10 + [429, 429]

    # A restart forgets nothing: a fresh process still refuses.
    with running_cloud(tmp_path / "c", db_url=db_url) as c:
        client = c.client()
        form = {"email": "shared@example.com", "password": PASSWORD, "csrf_token": c.csrf(client, "/login")}
        assert client.post("/login", data=form).status_code == 429
        session_c = _login_or_none(c)
        assert session_c is None


def _login_or_none(server: CloudServer) -> httpx.Client | None:
    try:
        return _login(server, "shared@example.com")
    except AssertionError:
        return None


# -- item 7: a login flood does not starve the API -------------------------------------------


@pytest.mark.slow
def test_whoami_stays_fast_during_200_concurrent_logins(tmp_path: Path) -> None:
    with running_cloud(tmp_path) as server:
        server.create_user("owner@example.com", PASSWORD, "floodco")
        token = server.pair("owner@example.com", PASSWORD, "floodco")["token"]
        # 200 logins with distinct unknown emails, from 200 addresses (so no
        # per-address limit helps): only the bound on hashing keeps the API up.
        # One anonymous session for all: no connection is opened (and left
        # idle past the keep-alive timeout) before the flood itself.
        seed = server.client()
        csrf = server.csrf(seed, "/login")
        flooders = [
            _from(server, f"127.0.{1 + i // 250}.{1 + i % 250}", cookies=seed.cookies) for i in range(200)
        ]

        def flood(i: int) -> int:
            form = {"email": f"nobody-{i}@example.com", "password": "whatever-123", "csrf_token": csrf}
            return flooders[i % 200].post("/login", data=form).status_code

        # Two tries, each a fresh flood: the machine is shared, and another
        # process's burst can stall any one measurement; before the fix both
        # floods took whoami's p99 to 10-20 s.
        seen = []
        for attempt in range(2):
            with latency_probe(f"{server.base_url}/v1/whoami", token) as idle:
                time.sleep(1.0)
            with latency_probe(f"{server.base_url}/v1/whoami", token) as probe:
                with ThreadPoolExecutor(200) as pool:
                    statuses = Counter(pool.map(flood, range(attempt * 200, attempt * 200 + 200)))
            assert set(statuses) <= {400, 503}, statuses
            assert statuses[503] > 0  # the gate shed what it could not hash soon
            assert not probe.failures and len(probe.latencies) >= 5, probe
            p50, p99 = statistics.median(probe.latencies), probe.percentile(0.99)
            # 200 ms on top of what this machine takes anyway for a whoami.
            budget = 0.2 + idle.percentile(0.99)
            seen.append(
                f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms during the flood "
                f"(p99 {idle.percentile(0.99) * 1000:.1f} ms idle)"
            )
            if p99 < budget:
                break
        else:
            raise AssertionError(f"whoami too slow during both floods: {seen}")
