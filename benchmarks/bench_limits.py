"""Guess limits under concurrency, and API latency during a login flood (issue 10, items 4-7).

Starts real ``halton-meter-cloud serve`` processes (temp SQLite, 127.0.0.1)
and prints, as answers by status code:

* ``--account-logins`` concurrent ``POST /login`` for one account (all wrong
  but the last): how many were checked (400/303) and refused (429);
* ``--approvals`` concurrent approvals with random pairing codes from one
  account: codes checked (404) vs refused (429);
* the same guesses split over two server processes sharing one database;
* ``GET /v1/whoami`` latency (p50/p99, one client, back to back) idle, then
  during ``--logins`` concurrent logins with distinct unknown emails, sent
  from one address and then from as many addresses as logins (127.0.x.y).

The last line is whoami p99 during the many-address flood against whoami
p99 idle in the same run.

Run: ``python benchmarks/bench_limits.py [--logins 200] [--approvals 1000] [--account-logins 100]``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.cloudserver import CloudServer, running_cloud  # noqa: E402
from tests.support.latency import latency_probe  # noqa: E402

PASSWORD = "correct-horse-1"
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def client_from(server: CloudServer, address: str) -> httpx.Client:
    """A client whose connections come from ``address``; patient (a backend without the fix is slow)."""
    client = httpx.Client(
        base_url=server.base_url,
        timeout=300.0,
        transport=httpx.HTTPTransport(local_address=address),
        limits=httpx.Limits(max_connections=500),
    )
    server._clients.append(client)  # closed when the server stops
    return client


def login(server: CloudServer, email: str, address: str = "127.0.0.1") -> httpx.Client:
    session = client_from(server, address)
    csrf = server.csrf(session, "/login")
    answer = session.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf})
    if answer.status_code != 303:
        raise SystemExit(f"login as {email} failed: {answer.status_code}")
    return session


def shown(counts: Counter[int]) -> str:
    return ", ".join(f"{n}×{status}" for status, n in sorted(counts.items()))


def concurrently(fn: Callable[[int], int], n: int, workers: int = 100) -> Counter[int]:
    barrier = threading.Barrier(min(n, workers))

    def run(i: int) -> int:
        if i < min(n, workers):
            barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(min(n, workers)) as pool:
        return Counter(pool.map(run, range(n)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def whoami_during(server: CloudServer, token: str, load: Callable[[], Counter[int]]) -> tuple[list[float], Counter[int]]:
    """Whoami latencies in ms (measured from another process) while ``load()`` runs."""
    with latency_probe(f"{server.base_url}/v1/whoami", token) as probe:
        statuses = load()
    if probe.failures:
        raise SystemExit(f"whoami failed during the load: {Counter(probe.failures)}")
    return [t * 1000 for t in probe.latencies], statuses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--approvals", type=int, default=1000)
    parser.add_argument("--account-logins", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        server = stack.enter_context(running_cloud(root / "one"))
        server.create_user("victim@example.com", PASSWORD, "victim")
        server.create_user("guesser@example.com", PASSWORD, "guessco")
        server.create_user("owner@example.com", PASSWORD, "floodco")

        # Item 4: one account, all wrong but the last password, all at once.
        http = client_from(server, "127.0.0.1")
        csrf = server.csrf(http, "/login")
        passwords = [f"wrong-{i:04d}-pass" for i in range(args.account_logins - 1)] + [PASSWORD]
        statuses = concurrently(
            lambda i: http.post(
                "/login", data={"email": "victim@example.com", "password": passwords[i], "csrf_token": csrf}
            ).status_code,
            len(passwords),
        )
        print(f"{len(passwords)} concurrent logins, one account (1 right password): {shown(statuses)}")

        # Item 5: random pairing codes from one account, all at once.
        guesser = login(server, "guesser@example.com", "127.0.0.2")
        gcsrf = server.csrf(guesser)

        def approve(session: httpx.Client, token: str, ws: str) -> int:
            return session.post(
                "/v1/pairing/approve", json={"user_code": code(), "workspace": ws},
                headers={"X-CSRF-Token": token},
            ).status_code

        statuses = concurrently(lambda _: approve(guesser, gcsrf, "guessco"), args.approvals)
        print(f"{args.approvals} concurrent approvals with random codes, one account: {shown(statuses)}")

        # Item 6: two processes, one database.
        db_url = f"sqlite:///{root / 'shared.sqlite'}"
        a = stack.enter_context(running_cloud(root / "a", db_url=db_url))
        b = stack.enter_context(running_cloud(root / "b", db_url=db_url))
        a.create_user("shared@example.com", PASSWORD, "shared")
        pair = [(s, login(s, "shared@example.com", "127.0.0.3")) for s in (a, b)]
        tokens = [s.csrf(c) for s, c in pair]
        statuses = concurrently(lambda i: approve(pair[i % 2][1], tokens[i % 2], "shared"), args.approvals)
        print(f"{args.approvals} concurrent random codes over two processes, one database: {shown(statuses)}")

        # Item 7: whoami while logins with unknown emails flood the server.
        token = server.pair("owner@example.com", PASSWORD, "floodco")["token"]
        idle, _ = whoami_during(server, token, lambda: (time.sleep(2.0), Counter[int]())[1])
        print(f"whoami idle: p50 {statistics.median(idle):.1f} ms, p99 {percentile(idle, 0.99):.1f} ms ({len(idle)} calls)")

        one = client_from(server, "127.0.0.4")
        one_csrf = server.csrf(one, "/login")

        def flood_one(i: int) -> int:
            form = {"email": f"nobody-{i}@example.com", "password": "whatever-123", "csrf_token": one_csrf}
            return one.post("/login", data=form).status_code

        taken, statuses = whoami_during(server, token, lambda: concurrently(flood_one, args.logins, 250))
        print(
            f"whoami during {args.logins} concurrent logins from one address: p50 {statistics.median(taken):.1f} ms, "
            f"p99 {percentile(taken, 0.99):.1f} ms ({len(taken)} calls); logins {shown(statuses)}"
        )

        # One anonymous session for every address, so no connection sits idle
        # past the keep-alive timeout before the flood.
        flooders = [client_from(server, f"127.1.{i // 250}.{1 + i % 250}") for i in range(args.logins)]
        for c in flooders:
            c.cookies = one.cookies

        def flood_many(i: int) -> int:
            form = {"email": f"nobody-{i}@example.com", "password": "whatever-123", "csrf_token": one_csrf}
            return flooders[i].post("/login", data=form).status_code

        taken, statuses = whoami_during(server, token, lambda: concurrently(flood_many, args.logins, 250))
        p99, idle99 = percentile(taken, 0.99), percentile(idle, 0.99)
        print(
            f"whoami during {args.logins} concurrent logins from {args.logins} addresses: "
            f"p50 {statistics.median(taken):.1f} ms, p99 {p99:.1f} ms ({len(taken)} calls); logins {shown(statuses)}"
        )
        print(
            f"whoami p99 during {args.logins} concurrent logins vs idle: {p99:.1f} vs {idle99:.1f} ms, "
            f"x{p99 / idle99:.2f}"
        )


if __name__ == "__main__":
    main()
