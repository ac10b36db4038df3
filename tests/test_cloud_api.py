"""The cloud API over a real uvicorn subprocess: pairing, tokens, security.

Ingest and totals live in test_cloud_ingest.py (run on SQLite and PostgreSQL).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from hm_proto import looks_like_token, normalize_user_code
from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row

PASSWORD = "correct-horse-1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud-api")) as server:
        server.create_user("alice@example.com", PASSWORD, "acme")
        server.create_user("bob@example.com", PASSWORD, "bobco")
        yield server


@pytest.fixture(scope="module")
def alice(cloud: CloudServer) -> httpx.Client:
    return cloud.login_session("alice@example.com", PASSWORD)


@pytest.fixture(scope="module")
def bob(cloud: CloudServer) -> httpx.Client:
    return cloud.login_session("bob@example.com", PASSWORD)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expire_code(cloud: CloudServer, user_code: str) -> None:
    """Age a pairing request past its 10 minutes (no sleeping in tests)."""
    engine = create_engine(cloud.db_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE pairings SET expires_at = 0 WHERE user_code = :c"),
            {"c": normalize_user_code(user_code)},
        )
    engine.dispose()


# -- start -----------------------------------------------------------------------


def test_start_answers_codes_and_uris(cloud: CloudServer) -> None:
    started = cloud.start_pairing(workspace="acme")
    assert re.fullmatch(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}", started["user_code"])
    assert len(started["device_code"]) >= 27  # >= 160 bits in base64url
    assert started["verification_uri"] == f"{cloud.app_url}/connect"
    assert (
        started["verification_uri_complete"]
        == f"{cloud.app_url}/connect?code={started['user_code']}"
    )
    assert started["expires_in"] == 600 and started["interval"] == 5


@pytest.mark.parametrize(
    ("body", "status", "error", "detail"),
    [
        (b"{not json", 400, "invalid_request", "Body is not valid JSON: send a JSON object"),
        (b"[]", 400, "invalid_request", "Body must be a JSON object"),
        (
            b'{"hostname": "h", "os": "linux", "agent_version": "0.2.1"}',
            422,
            "missing_field",
            "Field required: machine_id",
        ),
        (
            b'{"machine_id": 5, "hostname": "h", "os": "linux", "agent_version": "0.2.1"}',
            400,
            "invalid_request",
            "Invalid field: machine_id (expected a string)",
        ),
        # "$" accepted a trailing newline (issue 10, item 9): no field takes control
        # characters, and every pattern is a full match.
        (
            b'{"machine_id": "6f1c2a4e-1111-4222-8333-444455556666\\n", "hostname": "h",'
            b' "os": "linux", "agent_version": "0.2.1"}',
            400,
            "invalid_request",
            "Invalid field: machine_id (contains control characters)",
        ),
        (
            b'{"machine_id": "6f1c2a4e-1111-4222-8333-444455556666", "hostname": "h",'
            b' "os": "linux", "agent_version": "0.2.1", "workspace": "acme\\n"}',
            400,
            "invalid_request",
            "Invalid field: workspace (contains control characters)",
        ),
        (
            b'{"machine_id": "6f1c2a4e-1111-4222-8333-444455556666", "hostname": "h\\u0000x",'
            b' "os": "linux", "agent_version": "0.2.1"}',
            400,
            "invalid_request",
            "Invalid field: hostname (contains control characters)",
        ),
    ],
)
def test_start_rejects_bad_bodies(
    cloud: CloudServer, body: bytes, status: int, error: str, detail: str
) -> None:
    answer = httpx.post(
        f"{cloud.base_url}/v1/pairing/start",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == status
    assert answer.json() == {"error": error, "detail": detail}


def test_start_refuses_huge_body(cloud: CloudServer) -> None:
    answer = httpx.post(f"{cloud.base_url}/v1/pairing/start", content=b"x" * 100_000)
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
    assert "limit of 8192 bytes (8 KiB)" in answer.json()["detail"]


# -- poll --------------------------------------------------------------------------


def test_poll_pending_then_slow_down_when_too_fast(cloud: CloudServer) -> None:
    started = cloud.start_pairing()
    first = cloud.poll(started["device_code"], wait=0)
    assert (first["status_code"], first["error"]) == (400, "authorization_pending")
    second = cloud.poll(started["device_code"], wait=0)
    assert (second["status_code"], second["error"]) == (400, "slow_down")
    assert "wait 10 seconds" in second["detail"]


def test_poll_after_a_held_long_poll_is_not_slow_down(cloud: CloudServer) -> None:
    started = cloud.start_pairing()
    t0 = time.monotonic()
    held = cloud.poll(started["device_code"], wait=5.1)
    assert held["error"] == "authorization_pending"
    assert time.monotonic() - t0 >= 5.0
    again = cloud.poll(started["device_code"], wait=0)
    assert again["error"] == "authorization_pending"


def test_long_poll_answers_as_soon_as_approved(cloud: CloudServer, alice: httpx.Client) -> None:
    started = cloud.start_pairing(workspace="acme", hostname="fast.local")
    result: dict[str, object] = {}

    def long_poll() -> None:
        t0 = time.monotonic()
        result["answer"] = cloud.poll(started["device_code"], wait=20)
        result["elapsed"] = time.monotonic() - t0

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)
    approved_at = time.monotonic()
    assert cloud.approve(started["user_code"], "acme", alice).status_code == 200
    poller.join(10)
    answered_after = time.monotonic() - approved_at
    answer = result["answer"]
    assert isinstance(answer, dict) and answer["status_code"] == 200
    assert answered_after < 1.0, f"long-poll answered {answered_after:.2f}s after approval"
    assert float(result["elapsed"]) < 3.0  # type: ignore[arg-type]
    assert looks_like_token(answer["token"])
    assert answer["workspace_slug"] == "acme" and answer["workspace_name"] == "acme"
    assert answer["machine_id"] == started["machine_id"]
    again = cloud.poll(started["device_code"], wait=0)
    assert (again["status_code"], again["error"]) == (400, "expired_token")


def test_many_concurrent_long_polls(cloud: CloudServer, alice: httpx.Client) -> None:
    codes = [cloud.start_pairing()["device_code"] for _ in range(60)]
    target = cloud.start_pairing(workspace="acme")

    def timed_poll(code: str, wait: float) -> tuple[dict[str, object], float]:
        answer = cloud.poll(code, wait)
        return answer, time.monotonic()

    with ThreadPoolExecutor(max_workers=61) as pool:
        waiting = [pool.submit(timed_poll, code, 3.0) for code in codes]
        approved = pool.submit(timed_poll, target["device_code"], 20.0)
        time.sleep(1.0)  # every poll is now held by the server
        assert cloud.approve(target["user_code"], "acme", alice).status_code == 200
        approved_at = time.monotonic()  # the approval is committed once its answer is back
        answer, answered_at = approved.result(10)
        assert answer["status_code"] == 200
        assert answered_at - approved_at < 1.0, "approval did not wake its poll at once"
        results = [f.result(15) for f in waiting]
    assert all(a["error"] == "authorization_pending" for a, _ in results)


def test_deny_answers_access_denied(cloud: CloudServer, alice: httpx.Client) -> None:
    started = cloud.start_pairing()
    denied = cloud.approve(started["user_code"], "acme", alice, decision="deny")
    assert denied.status_code == 200 and denied.json()["approved"] is False
    answer = cloud.poll(started["device_code"], wait=0)
    assert (answer["status_code"], answer["error"]) == (400, "access_denied")


def test_expired_and_unknown_codes(cloud: CloudServer, alice: httpx.Client) -> None:
    started = cloud.start_pairing()
    expire_code(cloud, started["user_code"])
    answer = cloud.poll(started["device_code"], wait=0)
    assert (answer["status_code"], answer["error"]) == (400, "expired_token")
    page = alice.get("/connect", params={"code": started["user_code"]})
    assert page.status_code == 404
    assert "Code not found — it may have expired (codes last 10 minutes)." in page.text
    unknown = cloud.poll("no-such-device-code", wait=0)
    assert (unknown["status_code"], unknown["error"]) == (400, "expired_token")


def test_poll_rejects_bad_bodies(cloud: CloudServer) -> None:
    missing = httpx.post(f"{cloud.base_url}/v1/pairing/poll", json={})
    assert missing.status_code == 422
    assert missing.json() == {"error": "missing_field", "detail": "Field required: device_code"}
    bad_wait = httpx.post(
        f"{cloud.base_url}/v1/pairing/poll", json={"device_code": "x", "wait": "soon"}
    )
    assert bad_wait.status_code == 400 and bad_wait.json()["error"] == "invalid_request"


# -- approve -----------------------------------------------------------------------------


def test_connect_page_shows_what_is_approved(cloud: CloudServer, alice: httpx.Client) -> None:
    started = cloud.start_pairing(workspace="acme", hostname="vk.local", agent_version="0.2.1")
    page = alice.get("/connect", params={"code": started["user_code"].lower().replace("-", "")})
    assert page.status_code == 200
    for shown in (started["user_code"], "vk.local", started["machine_id"], "linux", "0.2.1"):
        assert shown in page.text
    assert '<option value="acme" selected>' in page.text


def test_approve_needs_session_and_csrf(cloud: CloudServer, alice: httpx.Client) -> None:
    started = cloud.start_pairing()
    anonymous = httpx.post(
        f"{cloud.base_url}/v1/pairing/approve",
        json={"user_code": started["user_code"], "workspace": "acme"},
    )
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "login_required"
    no_csrf = alice.post(
        "/v1/pairing/approve", json={"user_code": started["user_code"], "workspace": "acme"}
    )
    assert no_csrf.status_code == 403 and no_csrf.json()["error"] == "csrf_failed"
    form_no_csrf = alice.post(
        "/v1/pairing/approve", data={"user_code": started["user_code"], "workspace": "acme"}
    )
    assert form_no_csrf.status_code == 403
    assert cloud.poll(started["device_code"], wait=0)["error"] == "authorization_pending"


def test_approve_form_post_pairs_the_machine(cloud: CloudServer, alice: httpx.Client) -> None:
    started = cloud.start_pairing(hostname="form.local")
    answer = alice.post(
        "/v1/pairing/approve",
        data={
            "user_code": started["user_code"],
            "workspace": "acme",
            "decision": "approve",
            "csrf_token": cloud.csrf(alice),
        },
    )
    # Post/redirect/get: the result page is a GET, so a reload does not post again.
    assert answer.status_code == 303 and answer.headers["location"].startswith("/connect/done?r=")
    done = alice.get(answer.headers["location"])
    assert done.status_code == 200 and "Machine approved" in done.text and "form.local" in done.text
    assert alice.get(answer.headers["location"]).text == done.text
    assert cloud.poll(started["device_code"], wait=0)["status_code"] == 200
    forged = alice.get("/connect/done?r=" + answer.headers["location"].split("r=")[1][:-3] + "abc")
    assert forged.status_code == 404 and "Link expired" in forged.text


def test_login_names_the_code_being_approved(cloud: CloudServer) -> None:
    page = httpx.get(f"{cloud.base_url}/login?next=%2Fconnect%3Fcode%3Dwxj49kmn")
    assert "Sign in to approve the pairing code <code class=\"code\">WXJ4-9KMN</code>" in page.text
    assert "approve the pairing code" not in httpx.get(f"{cloud.base_url}/login?next=%2Facme%2F").text
    assert "approve the pairing code" not in httpx.get(
        f"{cloud.base_url}/login?next=%2Fconnect%3Fcode%3D%3Cscript%3E").text


def test_favicon_is_served(cloud: CloudServer) -> None:
    icon = httpx.get(f"{cloud.base_url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_unknown_code_on_approve_is_code_not_found(cloud: CloudServer, alice: httpx.Client) -> None:
    answer = cloud.approve("ZZZZ-ZZZZ", "acme", alice)
    assert answer.status_code == 404
    assert answer.json()["error"] == "code_not_found"
    assert answer.json()["detail"].startswith("Code not found — it may have expired")


# -- tokens: whoami, revoke -------------------------------------------------------------


def test_whoami_and_revoke(cloud: CloudServer) -> None:
    machine_id = str(uuid.uuid4())
    paired = cloud.pair(
        "alice@example.com", PASSWORD, "acme", machine_id=machine_id, hostname="vk.local"
    )
    token = paired["token"]
    me = httpx.get(f"{cloud.base_url}/v1/whoami", headers=bearer(token))
    assert me.status_code == 200
    assert me.json() == {
        "workspace_id": paired["workspace_id"],
        "workspace_slug": "acme",
        "workspace_name": "acme",
        "machine_id": machine_id,
        "hostname": "vk.local",
        "retention_days": None,
        "retained_from": None,
        "accept_bodies": False,
    }
    revoked = httpx.post(f"{cloud.base_url}/v1/pairing/revoke", headers=bearer(token))
    assert revoked.status_code == 200 and revoked.json() == {"revoked": True}
    assert httpx.post(f"{cloud.base_url}/v1/pairing/revoke", headers=bearer(token)).json() == {
        "revoked": True
    }
    for method, path in (
        ("GET", "/v1/whoami"),
        ("POST", "/v1/requests/batch"),
        ("GET", "/v1/requests/totals"),
    ):
        after = httpx.request(method, f"{cloud.base_url}{path}", headers=bearer(token))
        assert after.status_code == 401, path
        assert after.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert after.json()["error"] == "invalid_token"


@pytest.mark.parametrize(
    "header",
    [None, "Basic abc", "Bearer not-a-token", "Bearer hm_sync_" + "A" * 36],
)
def test_bad_tokens_are_401(cloud: CloudServer, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for path in ("/v1/whoami", "/v1/requests/totals?from_date=2026-11-01&to_date=2026-11-02"):
        answer = httpx.get(f"{cloud.base_url}{path}", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert set(answer.json()) == {"error", "detail"}
    revoke = httpx.post(f"{cloud.base_url}/v1/pairing/revoke", headers=headers)
    assert revoke.status_code == 401


def test_repairing_a_machine_replaces_its_device(cloud: CloudServer, alice: httpx.Client) -> None:
    machine_id = str(uuid.uuid4())
    first = cloud.pair(
        "alice@example.com", PASSWORD, "acme", machine_id=machine_id, hostname="old-name"
    )
    second = cloud.pair(
        "alice@example.com", PASSWORD, "acme", machine_id=machine_id, hostname="new-name"
    )
    assert (
        httpx.get(f"{cloud.base_url}/v1/whoami", headers=bearer(first["token"])).status_code == 401
    )
    me = httpx.get(f"{cloud.base_url}/v1/whoami", headers=bearer(second["token"]))
    assert me.json()["hostname"] == "new-name"
    page = alice.get("/acme/settings/devices")
    assert page.text.count(machine_id) == 1
    assert "new-name" in page.text and "old-name" not in page.text


# -- workspaces are private -------------------------------------------------------------


def test_second_user_cannot_reach_another_workspace(
    cloud: CloudServer, alice: httpx.Client, bob: httpx.Client
) -> None:
    paired = cloud.pair("alice@example.com", PASSWORD, "acme", hostname="alice-laptop")
    rows = [sample_row(cost_usd="1.25")]
    assert (
        httpx.post(
            f"{cloud.base_url}/v1/requests/batch",
            json=batch_body(rows),
            headers=bearer(paired["token"]),
        ).status_code
        == 200
    )
    devices = alice.get("/acme/settings/devices")
    device_id = re.search(r"/acme/settings/devices/([0-9a-f-]{36})/revoke", devices.text).group(1)  # type: ignore[union-attr]

    for path in (
        "/acme/",
        "/acme/settings/devices",
        f"/acme/settings/devices/{device_id}/revoke",
        "/nope/",
    ):
        page = bob.get(path)
        assert page.status_code == 404, path
        assert "alice-laptop" not in page.text
    forged = bob.post(
        f"/acme/settings/devices/{device_id}/revoke", data={"csrf_token": cloud.csrf(bob)}
    )
    assert forged.status_code == 404
    # Bob's own workspace URL with Alice's device id: not his device.
    assert bob.get(f"/bobco/settings/devices/{device_id}/revoke").status_code == 404
    assert (
        httpx.get(f"{cloud.base_url}/v1/whoami", headers=bearer(paired["token"])).status_code == 200
    )

    # Approving into someone else's workspace is refused.
    started = cloud.start_pairing(workspace="acme")
    refused = cloud.approve(started["user_code"], "acme", bob)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"

    # Bob's token for the same machine id sees nothing of acme's rows.
    bob_paired = cloud.pair("bob@example.com", PASSWORD, "bobco", machine_id=paired["machine_id"])
    totals = httpx.get(
        f"{cloud.base_url}/v1/requests/totals",
        params={"from_date": "2026-11-01", "to_date": "2026-11-30"},
        headers=bearer(bob_paired["token"]),
    )
    assert totals.json() == {"days": [], "retention_days": None, "retained_from": None}
    # The same row id in another workspace is a new row there, not a duplicate.
    again = httpx.post(
        f"{cloud.base_url}/v1/requests/batch",
        json=batch_body(rows),
        headers=bearer(bob_paired["token"]),
    )
    assert again.json() == {"accepted": 1, "duplicates": 0}


def test_unknown_endpoint_and_method_are_json_errors(cloud: CloudServer) -> None:
    missing = httpx.get(f"{cloud.base_url}/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = httpx.get(f"{cloud.base_url}/v1/pairing/start")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


# -- the guess limit (own server: it counts per client address) -------------------------


def test_wrong_codes_are_limited_per_account_and_per_address(tmp_path: Path) -> None:
    def client_from(server: CloudServer, address: str) -> httpx.Client:
        return server.client(transport=httpx.HTTPTransport(local_address=address))

    def login(server: CloudServer, email: str, address: str) -> httpx.Client:
        session = client_from(server, address)
        csrf = server.csrf(session, "/login")
        assert (
            session.post(
                "/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf}
            ).status_code
            == 303
        )
        return session

    with running_cloud(tmp_path) as server:
        server.create_user("carol@example.com", PASSWORD, "carolco")
        server.create_user("dave@example.com", PASSWORD, "daveco")
        carol = login(server, "carol@example.com", "127.0.0.2")
        for _ in range(10):
            assert server.approve("ZZZZ-ZZZ2", "carolco", carol).status_code == 404
        limited = server.approve("ZZZZ-ZZZ2", "carolco", carol)
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"
        assert 500 < int(limited.headers["Retry-After"]) <= 601
        # Even a right code is refused while limited, and the /connect page is too.
        started = server.start_pairing()
        assert server.approve(started["user_code"], "carolco", carol).status_code == 429
        assert carol.get("/connect", params={"code": started["user_code"]}).status_code == 429

        # Per account: Carol from another address is still limited.
        carol_elsewhere = login(server, "carol@example.com", "127.0.0.3")
        assert server.approve(started["user_code"], "carolco", carol_elsewhere).status_code == 429
        # Per address: Dave from Carol's address is limited, from his own he is not.
        dave_same_address = login(server, "dave@example.com", "127.0.0.2")
        assert server.approve(started["user_code"], "daveco", dave_same_address).status_code == 429
        dave = login(server, "dave@example.com", "127.0.0.4")
        assert server.approve(started["user_code"], "daveco", dave).status_code == 200


def test_session_cookie_is_httponly_lax_and_login_never_redirects_off_site(
    cloud: CloudServer,
) -> None:
    client = cloud.client()
    page = client.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert "hm_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    csrf = cloud.csrf(client, "/login")
    for target, landing in (
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("/acme/settings/devices", "/acme/settings/devices"),
    ):
        client.cookies.clear()
        csrf = cloud.csrf(client, "/login")
        answer = client.post(
            "/login",
            params={"next": target},
            data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": csrf},
        )
        assert answer.status_code == 303 and answer.headers["location"] == landing
    wrong = client.post(
        "/login", data={"email": "alice@example.com", "password": "nope-nope", "csrf_token": csrf}
    )
    assert wrong.status_code in (400, 403)


def test_oversized_form_posts_are_refused(cloud: CloudServer) -> None:
    client = cloud.client()
    csrf = cloud.csrf(client, "/login")
    answer = client.post(
        "/login", data={"email": "x" * 100_000, "password": "p", "csrf_token": csrf}
    )
    assert answer.status_code == 413
    assert "text/html" in answer.headers["content-type"] and "8192 bytes (8 KiB)" in answer.text
    assert "0 MiB" not in answer.text


def test_long_poll_ends_with_expired_token_when_the_code_expires_while_waiting(
    cloud: CloudServer,
) -> None:
    started = cloud.start_pairing()
    engine = create_engine(cloud.db_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE pairings SET expires_at = :t WHERE user_code = :c"),
            {"t": time.time() + 1.0, "c": normalize_user_code(started["user_code"])},
        )
    engine.dispose()
    t0 = time.monotonic()
    answer = cloud.poll(started["device_code"], wait=10)
    assert (answer["status_code"], answer["error"]) == (400, "expired_token")
    assert time.monotonic() - t0 < 5


def test_wrong_passwords_are_limited_per_account(cloud: CloudServer) -> None:
    cloud.create_user("mallory-target@example.com", PASSWORD, "target")
    client = cloud.client()
    csrf = cloud.csrf(client, "/login")
    attempt = {"email": "mallory-target@example.com", "password": "guess-guess", "csrf_token": csrf}
    for _ in range(10):
        assert client.post("/login", data=attempt).status_code == 400
    limited = client.post("/login", data={**attempt, "password": PASSWORD})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 500
    assert "Too many wrong passwords" in limited.text
    # Other accounts are unaffected.
    assert cloud.login_session("alice@example.com", PASSWORD) is not None


def test_signing_out_kills_every_copy_of_the_session_cookie(cloud: CloudServer) -> None:
    cloud.create_user("carol@example.com", PASSWORD, "carolco")
    browser = cloud.login_session("carol@example.com", PASSWORD)
    stolen = cloud.client(cookies=dict(browser.cookies))  # a copy of the cookie, elsewhere
    assert stolen.get("/carolco/").status_code == 200
    csrf = cloud.csrf(browser, "/logout")
    assert browser.post("/logout", data={"csrf_token": csrf}).status_code == 303
    after = stolen.get("/carolco/")
    assert after.status_code in (302, 303) and "/login" in after.headers["location"]
    again = cloud.login_session("carol@example.com", PASSWORD)  # signing in again works
    assert again.get("/carolco/").status_code == 200


def test_pairing_starts_are_limited_per_address(tmp_path: Path) -> None:
    body = {"machine_id": "9b2d3c1e-0f4a-4b8e-9c7d-2a1b3c4d5e6f", "hostname": "h", "os": "linux",
            "agent_version": "0.2.1", "workspace": None}
    with running_cloud(tmp_path) as server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        statuses = [http.post("/v1/pairing/start", json=body).status_code for _ in range(301)]
        assert statuses[:300] == [200] * 300
        assert statuses[300] == 429
        limited = http.post("/v1/pairing/start", json=body)
        assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) > 0
