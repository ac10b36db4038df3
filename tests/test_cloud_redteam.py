"""Backend defects an adversarial pass found in the pages landed after issue 10.

Each test here answered 500 (a traceback in the server log) before its fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.cloudserver import CloudServer, running_cloud

PASSWORD = "correct-horse-1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud-redteam")) as server:
        server.create_user("mallory@example.com", PASSWORD, "mallory")
        yield server


@pytest.fixture(scope="module")
def session(cloud: CloudServer) -> httpx.Client:
    return cloud.login_session("mallory@example.com", PASSWORD)


@pytest.fixture(scope="module")
def pg_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    """A backend on PostgreSQL: it refuses what SQLite quietly stores (long strings, big integers)."""
    from tests.support.postgres import running_postgres

    with running_postgres() as pg, running_cloud(tmp_path_factory.mktemp("cloud-redteam-pg"),
                                                 db_url=pg.create_database("hm_redteam")) as server:
        server.create_user("mallory@example.com", PASSWORD, "mallory")
        yield server


def _no_traceback(cloud: CloudServer) -> None:
    assert "Traceback" not in cloud.log()


@pytest.mark.parametrize("day", ["0001-01-01", "0001-06-30", "1969-12-31"])
def test_a_dashboard_range_at_the_start_of_the_calendar_is_a_message_not_a_500(
    cloud: CloudServer, session: httpx.Client, day: str
) -> None:
    # The "change against the previous period" reached before date.min: OverflowError.
    page = session.get("/mallory/", params={"from_date": day, "to_date": day})
    assert page.status_code == 200
    assert "Dates start at 1970-01-01" in page.text
    _no_traceback(cloud)


@pytest.mark.parametrize("digits", ["\u00b2", "\u2460"])  # superscript two, circled one
def test_unicode_digits_in_numeric_fields_are_400_not_500(
    cloud: CloudServer, session: httpx.Client, digits: str
) -> None:
    # str.isdigit() says yes to these, int() says no: a ValueError in the handler.
    audit = session.get("/mallory/settings/audit", params={"before": digits})
    assert audit.status_code == 200
    csrf = cloud.csrf(session, "/mallory/settings/members")
    role = session.post(
        "/mallory/settings/members",
        data={"csrf_token": csrf, "action": "role", "user_id": digits, "role": "admin"},
    )
    assert role.status_code == 400
    assert "not a member of this workspace" in role.text
    _no_traceback(cloud)


class _Recorder:
    """A local HTTP server that records every request and answers each with ``answer``."""

    def __init__(self, answer: tuple[int, dict[str, str]] = (200, {})) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                owner.seen.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(answer[0])
                for key, value in answer[1].items():
                    self.send_header(key, value)
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_budget_webhook_never_follows_a_redirect(monkeypatch: pytest.MonkeyPatch) -> None:
    # A public receiver answering 302 to an internal address made the backend GET it.
    from hm_cloud import budgets

    monkeypatch.setenv("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE", "1")  # both servers are local here
    internal = _Recorder()
    hook = _Recorder((302, {"Location": internal.url + "/latest/meta-data/"}))
    try:
        assert budgets._post(hook.url + "/hook", {"text": "x"}) == 302
        assert hook.seen == [("POST", "/hook")]
        assert internal.seen == []
    finally:
        hook.close()
        internal.close()


def test_a_budget_webhook_checks_the_address_it_connects_to(monkeypatch: pytest.MonkeyPatch) -> None:
    # private_target() resolved the name once; the POST resolved it again (DNS rebinding:
    # public the first time, 127.0.0.1 the second). The check now holds at connect time.
    from hm_cloud import budgets

    monkeypatch.delenv("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE", raising=False)
    internal = _Recorder()
    try:
        assert budgets._post(internal.url + "/admin", {"text": "x"}) == 0
        assert budgets._post(internal.url.replace("127.0.0.1", "localhost") + "/admin", {"text": "x"}) == 0
        assert budgets._post("file:///etc/passwd", {"text": "x"}) == 0
        assert internal.seen == []
    finally:
        internal.close()


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_per_workspace_limits_hold_under_concurrent_posts(tmp_path: object, database: str) -> None:
    # Budgets were counted and inserted in a deferred transaction (SQLite) or without a lock
    # (PostgreSQL): 120 concurrent adds stored 52 budgets where the limit is 50.
    import concurrent.futures
    import contextlib
    import uuid
    from pathlib import Path

    from hm_cloud.budgets import MAX_BUDGETS
    from hm_cloud.team import MAX_API_KEYS
    from tests.support.postgres import running_postgres

    with contextlib.ExitStack() as stack:
        db_url = None
        if database == "postgresql":
            db_url = stack.enter_context(running_postgres()).create_database("hm_redteam_limits")
        cloud = stack.enter_context(running_cloud(Path(str(tmp_path)), db_url=db_url))
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        owner = cloud.login_session("owner@example.com", PASSWORD)
        budgets_csrf = cloud.csrf(owner, "/acme/settings/budgets")
        keys_csrf = cloud.csrf(owner, "/acme/settings/api-keys")

        def add(n: int) -> int:
            if n % 2:
                return owner.post("/acme/settings/api-keys", data={"csrf_token": keys_csrf, "name": f"k{n}"}).status_code
            return owner.post("/acme/settings/budgets", data={
                "csrf_token": budgets_csrf, "name": f"b{n}-{uuid.uuid4().hex[:6]}", "scope_kind": "workspace",
                "period": "month", "limit_usd": "5", "thresholds": "50"}).status_code

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(add, range(260)))
        assert set(codes) <= {200, 303, 400}, codes
        budgets = owner.get("/acme/settings/budgets").text.count('name="budget_id"')
        keys = owner.get("/acme/settings/api-keys").text.count('name="key_id"')
        assert budgets == MAX_BUDGETS
        assert keys == MAX_API_KEYS
        _no_traceback(cloud)


@pytest.mark.slow
def test_pairing_start_fields_longer_than_their_columns_are_400_on_postgresql(pg_cloud: CloudServer) -> None:
    # os and agent_version were checked at 255 characters but stored in 120 and 64:
    # PostgreSQL refused the INSERT (StringDataRightTruncation), a 500.
    import uuid

    api = pg_cloud.client()
    for name, size in (("os", 121), ("agent_version", 65), ("hostname", 256)):
        body = {"machine_id": str(uuid.uuid4()), "hostname": "h", "os": "linux", "agent_version": "1", name: "v" * size}
        answer = api.post("/v1/pairing/start", json=body)
        assert answer.status_code == 400, (name, answer.text)
        assert f"Invalid field: {name}" in answer.json()["detail"]
        body[name] = "v" * (size - 1)
        assert api.post("/v1/pairing/start", json=body).status_code == 200
    _no_traceback(pg_cloud)


@pytest.mark.slow
def test_ids_past_a_32_bit_integer_are_400_not_500_on_postgresql(pg_cloud: CloudServer) -> None:
    # users.id and audit_log.id are INTEGER: "99999999999999999" passed the digits check and
    # PostgreSQL failed the query (NumericValueOutOfRange), a 500; SQLite simply found nothing.
    session = pg_cloud.login_session("mallory@example.com", PASSWORD)
    for big in ("2147483648", "99999999999999999", "999999999999999999"):
        assert session.get("/mallory/settings/audit", params={"before": big}).status_code == 200
        csrf = pg_cloud.csrf(session, "/mallory/settings/members")
        role = session.post("/mallory/settings/members",
                            data={"csrf_token": csrf, "action": "role", "user_id": big, "role": "admin"})
        assert role.status_code == 400
    _no_traceback(pg_cloud)


@pytest.mark.slow
def test_a_sign_up_workspace_name_longer_than_its_column_is_400_on_postgresql(pg_cloud: CloudServer) -> None:
    # workspaces.name is VARCHAR(200); sign-up took any length and PostgreSQL refused it (a 500).
    visitor = pg_cloud.client()
    csrf = pg_cloud.csrf(visitor, "/signup")
    answer = visitor.post("/signup", data={"csrf_token": csrf, "email": "new@example.com",
                                           "password": "long-enough-1", "workspace": "Zz" * 125})
    assert answer.status_code == 400
    assert "at most 200 characters" in answer.text
    _no_traceback(pg_cloud)


# -- round 2: the pages and webhooks landed with issues 15-17 ---------------------------------


def test_a_retention_of_unicode_digits_is_400_not_500(cloud: CloudServer, session: httpx.Client) -> None:
    # parse_days checked str.isdigit(), which '²' passes, then int('²') raised: a 500.
    csrf = cloud.csrf(session, "/mallory/settings/retention")
    answer = session.post("/mallory/settings/retention", data={"csrf_token": csrf, "days": "3\u00b2"})
    assert answer.status_code == 400
    assert "whole number of days" in answer.text
    _no_traceback(cloud)


def test_deleting_another_workspaces_budget_id_keeps_its_alerts_fired(cloud: CloudServer,
                                                                       session: httpx.Client) -> None:
    # delete_budget removed the alerts of any budget id before checking the budget was the
    # workspace's own: an admin of one workspace (a former admin of another, who kept its ids)
    # made the other workspace's thresholds fire again.
    from sqlalchemy import create_engine, insert, select

    from hm_cloud import budgets, db

    cloud.create_user("victim@example.com", PASSWORD, "victim-ws")
    engine = create_engine(cloud.db_url)
    try:
        with engine.connect() as conn:
            victim_ws = conn.execute(select(db.workspaces.c.id).where(db.workspaces.c.slug == "victim-ws")).scalar_one()
        budgets.add_budget(engine, victim_ws, budgets.parse_form({"name": "theirs", "limit_usd": "5"}), 0.0)
        theirs = budgets.list_budgets(engine, victim_ws)[0]
        with engine.begin() as conn:
            conn.execute(insert(db.workspace_budget_alerts).values(budget_id=theirs.id, period="2026-11",
                                                                   threshold=50, fired_at=0.0, spend_nanos=1))
        csrf = cloud.csrf(session, "/mallory/settings/budgets")
        answer = session.post("/mallory/settings/budgets",
                              data={"csrf_token": csrf, "action": "delete", "budget_id": theirs.id})
        assert answer.status_code == 303
        with engine.connect() as conn:
            fired = conn.execute(select(db.workspace_budget_alerts.c.threshold)
                                 .where(db.workspace_budget_alerts.c.budget_id == theirs.id)).all()
        assert fired == [(50,)]
        assert [b.id for b in budgets.list_budgets(engine, victim_ws)] == [theirs.id]
    finally:
        engine.dispose()


@pytest.mark.parametrize("address", [
    "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2002:a00:1::1",
    "2002:7f00:1::1", "::ffff:169.254.169.254",
])
def test_a_budget_webhook_refuses_a_private_ipv4_inside_an_ipv6_address(address: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # is_global said yes to ::127.0.0.1, NAT64 64:ff9b::/96 and 6to4 2002::/16 around a private
    # IPv4 address; a network that routes them reaches the backend's own services.
    from hm_cloud import budgets

    monkeypatch.delenv("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE", raising=False)
    assert not budgets._public_address(address)
    assert budgets.private_target(f"http://[{address}]/hook") is not None
    assert budgets._public_address("2606:4700::1111") and budgets._public_address("64:ff9b::808:808")


def test_a_budget_webhook_that_drips_its_answer_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # The 5 s timeout is per read: a receiver sending one byte of its headers every second
    # held the alert thread for as long as it liked (each new alert took another thread).
    import socket
    import threading

    from hm_cloud import budgets

    monkeypatch.setenv("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE", "1")  # the receiver is local
    monkeypatch.setattr(budgets, "TOTAL_S", 1.0)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=drip, daemon=True).start()
    result: list[int] = []
    poster = threading.Thread(target=lambda: result.append(
        budgets._post(f"http://127.0.0.1:{listener.getsockname()[1]}/hook", {"text": "x"})), daemon=True)
    try:
        poster.start()
        poster.join(30)
        assert not poster.is_alive(), "the webhook POST was still reading after 30 s"
        assert result == [0]
    finally:
        stop.set()
        listener.close()


def test_a_budget_webhook_log_line_names_its_host_not_its_password(caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from hm_cloud import budgets

    monkeypatch.delenv("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE", raising=False)
    alert = budgets.Alert("b", "id", "ws", "2026-11", "month", 50, "1", "2", 50.0,
                          {"kind": "workspace", "value": None}, "2026-11-29T00:00:00Z")
    with caplog.at_level("WARNING", logger="hm_cloud.budgets"):
        assert not budgets.send_webhook("http://hook:s3cret-pw@127.0.0.1:9/services/T0/B0/s3cret-path", alert)
    assert "127.0.0.1:9" in caplog.text
    assert "s3cret" not in caplog.text


def test_a_budget_webhook_answering_something_not_http_is_a_failed_post(monkeypatch: pytest.MonkeyPatch) -> None:
    # http.client's BadStatusLine is not an OSError: it escaped _post and ended the delivery
    # thread, so the e-mail of that alert and every later alert of the batch were never sent.
    from hm_cloud import budgets
    from tests.support.receiver import not_http

    monkeypatch.setenv("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE", "1")
    with not_http() as url:
        assert budgets._post(url, {"text": "x"}) == 0


def test_every_cloud_csv_export_never_hands_a_spreadsheet_a_formula(cloud: CloudServer, session: httpx.Client) -> None:
    # A hostile device names its models, projects and hostname; only a leading = + - @ was
    # escaped, so "x;=HYPERLINK(…)" ran in an Excel whose list separator is ';'.
    import re

    from tests.support.cloudserver import batch_body, sample_row
    from tests.test_daemon_redteam import HOSTILE_NAMES, formula_cells

    paired = cloud.pair("mallory@example.com", PASSWORD, "mallory", hostname="h;=1+1")
    rows = [sample_row(model=name, project=name, ts="2026-11-20T10:00:00.000Z") for name in HOSTILE_NAMES]
    device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
    assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
    csrf = cloud.csrf(session, "/mallory/settings/api-keys")
    page = session.post("/mallory/settings/api-keys", data={"csrf_token": csrf, "name": "csv"})
    key = re.search(r'value="(hm_read_[0-9A-Za-z]+)"', page.text)
    assert key, page.text
    reader = cloud.client(headers={"Authorization": f"Bearer {key.group(1)}"})
    days = {"from_date": "2026-11-01", "to_date": "2026-11-29"}
    exports = [reader.get("/v1/usage", params={**days, "group_by": g, "format": "csv"}) for g in ("machine", "model")]
    exports.append(reader.get("/v1/usage", params={**days, "format": "focus"}))
    exports += [session.get("/mallory/spend.csv", params={**days, "chart": c}) for c in ("model", "machine", "member")]
    for answer in exports:
        assert answer.status_code == 200, answer.text
        assert formula_cells(answer.text) == [], answer.url
    assert "x;'=HYPERLINK" in exports[1].text


@pytest.mark.slow
def test_usage_counts_unknown_read_keys_per_address_and_reads_per_key(tmp_path: object) -> None:
    # GET /v1/usage had no limit at all: unknown keys could be tried without end, and one key
    # could sum ten years of a workspace's rows in a tight loop.
    import concurrent.futures
    import contextlib
    import re
    import secrets
    from collections.abc import Callable
    from pathlib import Path

    from hm_cloud.limits import READ_KEY_GUESSES_PER_ADDRESS, USAGE_READS_PER_KEY

    def server_with_a_key(where: Path) -> Iterator[tuple[str, Callable[[str], int]]]:
        with running_cloud(where) as server:
            server.create_user("owner@example.com", PASSWORD, "acme")
            owner = server.login_session("owner@example.com", PASSWORD)
            page = owner.post("/acme/settings/api-keys",
                              data={"csrf_token": server.csrf(owner, "/acme/settings/api-keys"), "name": "grafana"})
            key = re.search(r'value="(hm_read_[0-9A-Za-z]+)"', page.text)
            assert key, page.text
            api = server.client(limits=httpx.Limits(max_connections=32))
            yield key.group(1), lambda k: api.get("/v1/usage", headers={"Authorization": f"Bearer {k}"}).status_code
            _no_traceback(server)

    with contextlib.contextmanager(server_with_a_key)(Path(str(tmp_path))) as (key, get):
        # A live key first: it is not a guess. Then 40 unknown keys at once from one address.
        assert get(key) == 200
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            guesses = list(pool.map(get, [f"hm_read_{secrets.token_urlsafe(32)}" for _ in range(40)]))
        assert sorted(guesses) == [401] * READ_KEY_GUESSES_PER_ADDRESS.count + [429] * 10
        assert get(key) == 429  # a live key from a blocked address waits too

    with contextlib.contextmanager(server_with_a_key)(Path(str(tmp_path)) / "reads") as (key, get):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            reads = list(pool.map(get, [key] * (USAGE_READS_PER_KEY.count + 5)))
        assert sorted(reads) == [200] * USAGE_READS_PER_KEY.count + [429] * 5


@pytest.mark.slow
def test_a_master_key_that_cannot_unwrap_the_workspace_key_is_503_and_a_message_not_500(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    # Restarted with a new HALTON_METER_CLOUD_MASTER_KEY before rewrap-keys: InvalidToken on
    # every body upload (a 500 the machine retried for ever) and on the request page.
    from pathlib import Path

    from cryptography.fernet import Fernet

    from tests.support.cloudserver import batch_body, sample_row

    tmp = Path(str(tmp_path))
    monkeypatch.setenv("HALTON_METER_CLOUD_MASTER_KEY", Fernet.generate_key().decode())
    with running_cloud(tmp) as server:
        server.create_user("owner@example.com", PASSWORD, "acme")
        owner = server.login_session("owner@example.com", PASSWORD)
        csrf = server.csrf(owner, "/acme/settings/retention")
        assert owner.post("/acme/settings/retention", data={"csrf_token": csrf, "action": "accept_bodies"}
                          ).status_code == 303
        token = server.pair("owner@example.com", PASSWORD, "acme")["token"]
        rows = [sample_row(), sample_row()]
        device = server.client(headers={"Authorization": f"Bearer {token}"})
        assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
        first = {"bodies": [{"id": rows[0]["id"], "request": "hi", "response": "yo", "truncated": False}]}
        assert device.post("/v1/requests/bodies", json=first).json()["stored"] == 1
    monkeypatch.setenv("HALTON_METER_CLOUD_MASTER_KEY", Fernet.generate_key().decode())  # the old one dropped
    with running_cloud(tmp) as server:
        device = server.client(headers={"Authorization": f"Bearer {token}"})
        second = {"bodies": [{"id": rows[1]["id"], "request": "hi", "response": "yo", "truncated": False}]}
        answer = device.post("/v1/requests/bodies", json=second)
        assert answer.status_code == 503 and answer.json()["error"] == "bodies_unavailable"
        owner = server.login_session("owner@example.com", PASSWORD)
        page = owner.get(f"/acme/requests/{rows[0]['id']}")
        assert page.status_code == 200 and "rewrap-keys" in page.text
        _no_traceback(server)


def test_a_device_naming_thousands_of_models_cannot_bloat_the_dashboard(cloud: CloudServer,
                                                                         session: httpx.Client) -> None:
    # Every table listed every name a device sent: 50,000 made a 29 MB page that took 23 s
    # to render for everyone in the workspace. Tables now show 100 rows and sum the rest.
    from hm_cloud.views import MAX_TABLE_ROWS
    from tests.support.cloudserver import batch_body, sample_row

    paired = cloud.pair("mallory@example.com", PASSWORD, "mallory", hostname="bomber")
    device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
    for batch in range(3):
        rows = [sample_row(model=f"bomb-{batch}-{n}", project=f"p-{batch}-{n}", ts="2026-10-10T10:00:00.000Z")
                for n in range(1000)]
        assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
    page = session.get("/mallory/", params={"from_date": "2026-10-10", "to_date": "2026-10-10"})
    assert page.status_code == 200
    assert page.text.count("bomb-") < 4 * MAX_TABLE_ROWS  # 100 rows (link, title, text) and the chart
    assert f"{3000 - MAX_TABLE_ROWS:,} more (download the CSV for all)" in page.text
    assert "other (2994)" in page.text  # the chart: six models and the rest as one
    assert len(page.content) < 400_000
    whole = session.get("/mallory/spend.csv", params={"from_date": "2026-10-10", "to_date": "2026-10-10"})
    assert whole.text.count("bomb-") == 2 * 3000  # the CSV keeps every name (key and label)


def test_wrong_metrics_scrape_keys_are_counted_per_address(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    # The scrape key is the operator's word: /metrics let anyone try keys without end.
    from pathlib import Path

    from hm_cloud.limits import METRICS_KEY_GUESSES_PER_ADDRESS

    monkeypatch.setenv("HALTON_METER_CLOUD_METRICS_KEY", "grafana")
    monkeypatch.delenv("HALTON_METER_CLOUD_METRICS_ALLOW", raising=False)
    with running_cloud(Path(str(tmp_path))) as server:
        scraper = server.client()
        right = {"Authorization": "Bearer grafana"}
        for _ in range(3):  # a right key is not a guess
            assert scraper.get("/metrics", headers=right).status_code == 200
        codes = [scraper.get("/metrics", headers={"Authorization": f"Bearer guess-{n}"}).status_code
                 for n in range(METRICS_KEY_GUESSES_PER_ADDRESS.count + 2)]
        assert codes == [403] * METRICS_KEY_GUESSES_PER_ADDRESS.count + [429, 429]
        refused = scraper.get("/metrics", headers=right)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        _no_traceback(server)


@pytest.mark.slow
def test_concurrent_first_saves_of_workspace_settings_are_not_500_on_postgresql(pg_cloud: CloudServer) -> None:
    # set_retention and set_accept updated, found no row, and inserted: two first saves at once
    # both inserted and one hit the primary key (UniqueViolation, a 500; SQLite serialised them).
    import concurrent.futures

    pg_cloud.create_user("settler@example.com", PASSWORD, "settler")
    owner = pg_cloud.login_session("settler@example.com", PASSWORD)
    csrf = pg_cloud.csrf(owner, "/settler/settings/retention")

    def save(n: int) -> int:
        data = {"action": "accept_bodies"} if n % 2 else {"days": "30", "confirm": "yes"}
        return owner.post("/settler/settings/retention", data={"csrf_token": csrf, **data}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(save, range(8))) == [303] * 8
    page = owner.get("/settler/settings/retention").text
    assert "30 days" in page
    _no_traceback(pg_cloud)


@pytest.mark.slow
def test_concurrent_claims_of_one_slug_or_one_machine_are_not_500_on_postgresql(pg_cloud: CloudServer) -> None:
    # Check-then-insert under no shared lock: two sign-ups or two new workspaces with one
    # name, or two approvals of one machine id, both inserted and the loser hit a unique
    # constraint (UniqueViolation, a 500). SQLite serialised them; PostgreSQL did not.
    import concurrent.futures
    import uuid

    def sign_up(n: int) -> int:
        visitor = pg_cloud.client()
        return visitor.post("/signup", data={"csrf_token": pg_cloud.csrf(visitor, "/signup"),
                                             "email": f"claim{n}@example.com", "password": PASSWORD,
                                             "workspace": "claimed"}).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(sign_up, range(4))) == [303] + [400] * 3  # 4: the per-address argon2 gate
    people = []
    for n in range(4):
        pg_cloud.create_user(f"maker{n}@example.com", PASSWORD, f"maker{n}")
        people.append(pg_cloud.login_session(f"maker{n}@example.com", PASSWORD))
    tokens = [pg_cloud.csrf(p, "/workspaces/new") for p in people]

    def new_workspace(n: int) -> int:
        return people[n % 4].post("/workspaces/new", data={"csrf_token": tokens[n % 4], "name": "contested"}
                                  ).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(new_workspace, range(8))) == [303] + [400] * 7
    machine = str(uuid.uuid4())
    starts = [pg_cloud.start_pairing(machine_id=machine, workspace="maker0") for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda s: pg_cloud.approve(s["user_code"], "maker0", people[0]).status_code, starts))
    assert codes == [200] * 4
    devices = people[0].get("/maker0/settings/devices").text
    assert devices.count(machine) == 1
    _no_traceback(pg_cloud)


def test_no_page_can_be_framed_and_no_secret_url_leaves_in_a_referer(cloud: CloudServer, session: httpx.Client) -> None:
    # No frame-ancestors / X-Frame-Options: a same-site page (SameSite=Lax still sends the
    # cookie there) could frame /connect?code=… and have the victim click Approve.
    visitor = cloud.client()
    answers = [session.get("/mallory/"), session.get("/mallory/settings/members"), session.get("/connect"),
               session.get("/mallory/spend.csv"), visitor.get("/login"), visitor.get("/invite/not-a-link"),
               visitor.get("/v1/usage"), visitor.get("/healthz")]
    for answer in answers:
        assert answer.headers["x-frame-options"] == "DENY", answer.url
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], answer.url
        assert answer.headers["referrer-policy"] == "same-origin"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_a_row_dated_at_the_end_of_the_calendar_does_not_break_the_focus_export(cloud: CloudServer,
                                                                               session: httpx.Client) -> None:
    # A device's row of 9999-12-31 (a valid timestamp) made focus_line add a month past
    # date.max: OverflowError, a 500 for every FOCUS export of that range.
    import csv
    import io
    import re

    from tests.support.cloudserver import batch_body, sample_row

    paired = cloud.pair("mallory@example.com", PASSWORD, "mallory", hostname="time-traveller")
    device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
    rows = [sample_row(ts="9999-12-31T23:59:59.000Z"), sample_row(ts="0001-01-01T00:00:00.000Z")]
    assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
    csrf = cloud.csrf(session, "/mallory/settings/api-keys")
    key = re.search(r'value="(hm_read_[0-9A-Za-z]+)"',
                    session.post("/mallory/settings/api-keys", data={"csrf_token": csrf, "name": "ends"}).text)
    assert key
    reader = cloud.client(headers={"Authorization": f"Bearer {key.group(1)}"})
    for first, last in (("9999-12-01", "9999-12-31"), ("0001-01-01", "0001-01-31")):
        answer = reader.get("/v1/usage", params={"from_date": first, "to_date": last, "format": "focus"})
        assert answer.status_code == 200, answer.text
        [line] = list(csv.DictReader(io.StringIO(answer.text)))
        assert line["ChargePeriodStart"] == f"{last if first.startswith('9999') else first}T00:00:00Z"
    _no_traceback(cloud)
