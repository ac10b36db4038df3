"""Backend hardening (issue 10, items 3, 10, 11): hostile bodies, encodings and forms.

Each test here failed on the backend before its fix. The guess limits (items
4-7) are in tests/test_cloud_limits.py; the Row bounds (items 1, 2, 8, 9) in
tests/test_cloud_ingest.py.
"""

from __future__ import annotations

import gzip
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import zstandard

from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row

PASSWORD = "correct-horse-1"
HUGE = 512 * 1024 * 1024


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud-hardening")) as server:
        server.create_user("carol@example.com", PASSWORD, "carol")
        yield server


@pytest.fixture(scope="module")
def token(cloud: CloudServer) -> str:
    paired = cloud.pair("carol@example.com", PASSWORD, "carol")
    return str(paired["token"])


def _raw(cloud: CloudServer, head: str, chunks: Iterator[bytes] | None = None) -> tuple[int, bytes]:
    """Send ``head`` (and ``chunks``, until the server stops reading); the status and body."""
    url = urlsplit(cloud.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        try:
            for chunk in chunks or ():
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: what we want
        data = b""
        try:
            while b"\r\n\r\n" not in data or not _complete(data):
                got = sock.recv(65536)
                if not got:
                    break
                data += got
        except (TimeoutError, ConnectionResetError):
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data.partition(b"\r\n\r\n")[2]


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


# -- item 3: every endpoint bounds its body before reading it ------------------


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/v1/pairing/approve", "application/json"),  # read it all, unauthenticated
        ("POST", "/v1/pairing/approve", "application/x-www-form-urlencoded"),
        ("POST", "/v1/pairing/start", "application/json"),
        ("POST", "/v1/pairing/poll", "application/json"),
        ("POST", "/v1/pairing/revoke", "application/json"),
        ("POST", "/v1/requests/batch", "application/json"),
        ("POST", "/login", "application/x-www-form-urlencoded"),
        ("POST", "/signup", "application/x-www-form-urlencoded"),
        ("POST", "/logout", "application/x-www-form-urlencoded"),
        ("GET", "/v1/whoami", "application/json"),
        ("GET", "/healthz", "application/json"),
    ],
)
def test_a_huge_declared_body_is_refused_before_it_is_read(
    cloud: CloudServer, method: str, path: str, content_type: str
) -> None:
    head = (
        f"{method} {path} HTTP/1.1\nHost: x\nContent-Type: {content_type}\n"
        f"Content-Length: {HUGE}\n"
    )
    started = time.monotonic()
    status, body = _raw(cloud, head)  # not one byte of the body is sent
    assert status == 413, body[:300]
    assert time.monotonic() - started < 8  # answered at once, not after a read timeout
    limit = "4194304 bytes (4 MiB)" if path == "/v1/requests/batch" else "8192 bytes (8 KiB)"
    assert limit.encode() in body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/pairing/approve", "application/json"),
        ("/v1/pairing/approve", "application/x-www-form-urlencoded"),
        ("/login", "application/x-www-form-urlencoded"),
        ("/v1/pairing/start", "application/json"),
    ],
)
def test_a_chunked_body_is_cut_off_while_it_streams_in(
    cloud: CloudServer, path: str, content_type: str
) -> None:
    head = (
        f"POST {path} HTTP/1.1\nHost: x\nContent-Type: {content_type}\n"
        "Transfer-Encoding: chunked\n"
    )
    piece = b"a" * 4096
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(64 * 1024))  # 256 MiB offered
    status, body = _raw(cloud, head, chunks)
    assert status == 413, body[:300]
    assert b"8192 bytes (8 KiB)" in body
    assert b"0 MiB" not in body


def test_the_server_stays_small_under_a_big_unauthenticated_body(cloud: CloudServer) -> None:
    def rss_kib() -> int:
        for line in open(f"/proc/{cloud.process.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    before = rss_kib()
    head = "POST /v1/pairing/approve HTTP/1.1\nHost: x\nContent-Type: application/json\nTransfer-Encoding: chunked\n"
    piece = b"b" * 65536
    status, _ = _raw(cloud, head, (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(2048)))
    assert status == 413
    assert rss_kib() - before < 32 * 1024  # 128 MiB offered; the server grew by < 32 MiB


# -- item 11: encodings, the 413 page, sign-up, paths that are not workspaces ---------


def test_a_gzip_or_zstd_body_with_trailing_garbage_is_refused(
    cloud: CloudServer, token: str
) -> None:
    http = cloud.client(headers={"Authorization": f"Bearer {token}"})
    body = httpx.Request("POST", "/", json=batch_body([sample_row()])).content
    for encoding, packed in (
        ("gzip", gzip.compress(body) + b"garbage"),
        ("gzip", gzip.compress(body) + gzip.compress(body)),  # a second member is not read
        ("zstd", zstandard.ZstdCompressor().compress(body) + b"garbage"),
    ):
        answer = http.post(
            "/v1/requests/batch",
            content=packed,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert answer.status_code == 400, (encoding, answer.text)
        assert answer.json()["error"] == "invalid_request"
    clean = http.post(
        "/v1/requests/batch",
        content=gzip.compress(body),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert clean.json() == {"accepted": 1, "duplicates": 0}


@pytest.mark.parametrize("path", ["/robots.txt", "/robots.txt/", "/a.b/", "/-x/"])
def test_paths_that_are_not_slugs_are_not_workspaces(cloud: CloudServer, path: str) -> None:
    answer = cloud.client().get(path)
    assert answer.status_code == 404
    assert "/login" not in answer.headers.get("location", "")


@pytest.mark.parametrize("token", ["💥", "é" * 48, "\ud7ff"])
def test_a_non_ascii_csrf_token_is_a_failed_check_not_a_500(cloud: CloudServer, token: str) -> None:
    client = cloud.client()
    client.get("/login")
    for path in ("/login", "/logout", "/signup"):
        answer = client.post(path, data={"email": "a@example.com", "csrf_token": token})
        assert answer.status_code == 403, (path, answer.status_code)
    approve = client.post("/v1/pairing/approve", json={"user_code": "x"}, headers={"X-CSRF-Token": "ü".encode("latin-1")})
    assert approve.status_code in (401, 403)


def test_form_values_with_nul_are_400_not_500(cloud: CloudServer) -> None:
    client = cloud.client()
    csrf = cloud.csrf(client, "/login")
    answer = client.post(
        "/login", data={"email": "a\x00@example.com", "password": "p", "csrf_token": csrf}
    )
    assert answer.status_code == 400
    assert "control characters" in answer.text


# -- item 10: a request that fails CSRF never sets or overwrites the session cookie -----


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/login", {"email": "carol@example.com", "password": "attacker-pass"}),
        ("/signup", {"email": "new@example.com", "password": "attacker-pass", "workspace": "w"}),
        ("/logout", {}),
        ("/v1/pairing/approve", {"user_code": "ABCD-EFGH", "workspace": "carol"}),
    ],
)
def test_a_cross_site_post_does_not_sign_the_victim_out(
    cloud: CloudServer, path: str, form: dict[str, str]
) -> None:
    victim = cloud.login_session("carol@example.com", PASSWORD)
    # The forged post arrives without the victim's SameSite=Lax cookie, so the
    # server sees a brand-new anonymous session and no valid CSRF token.
    forged = httpx.post(f"{cloud.base_url}{path}", data=form, headers={"Origin": "https://evil.example"})
    assert forged.status_code in (303, 403), forged.status_code
    assert "set-cookie" not in forged.headers
    # Even with a cookie, a wrong token changes nothing.
    attacker = cloud.client()
    attacker.get("/login")
    wrong = attacker.post(path, data={**form, "csrf_token": "0" * 48})
    assert "set-cookie" not in wrong.headers
    assert victim.get("/carol/").status_code == 200  # still signed in


def test_a_refused_or_limited_post_sets_no_cookie_either(cloud: CloudServer) -> None:
    oversized = httpx.post(f"{cloud.base_url}/login", data={"email": "x" * 20_000})
    assert oversized.status_code == 413 and "set-cookie" not in oversized.headers
    garbled = httpx.post(
        f"{cloud.base_url}/login",
        content=b"email=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert garbled.status_code == 400 and "set-cookie" not in garbled.headers
