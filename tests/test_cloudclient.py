"""The sync and async cloud clients against a real local HTTP(S) server.

Async tests run on asyncio and trio (conftest's anyio_backend). Every scenario
runs on both clients; the servers are stopped by their context managers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import random
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hm_proto import (
    Approved,
    CodeIssued,
    Denied,
    Expired,
    PairingClient,
    PairingState,
    Pending,
    Reconciler,
    ReconcileResult,
    Request,
    Response,
    Revoked,
    TransportFailure,
    Unauthorised,
    WhoAmI,
    parse_whoami,
    receive_revoke,
    revoke_request,
    whoami_request,
)
from hm_proto.server import generate_token
from hm_proto_client import (
    AsyncCloudClient,
    BadBaseUrl,
    CloudClientError,
    PairingFailed,
    SyncCloudClient,
    parse_base_url,
    run_pairing,
    run_pairing_async,
)
from tests.conftest import free_port
from tests.support.apiserver import ApiServer, Reply, SeenRequest, error, running_server
from tests.support.cloudserver import CloudServer, running_cloud

MACHINE = "0b6f0c4e-6f3a-4d55-9a43-6c1f6b0f2a11"
TOKEN = generate_token(random.Random(3).randbytes)
WHOAMI = Request("GET", "/v1/whoami", (("Accept", "application/json"),))


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with running_server() as srv:
        yield srv


def check(answer: Response | TransportFailure, kind: str) -> None:
    """``kind`` is a status code as text, or a TransportFailure kind."""
    if kind.isdigit():
        assert isinstance(answer, Response), answer
        assert answer.status == int(kind)
    else:
        assert isinstance(answer, TransportFailure), answer
        assert answer.kind == kind


# -- scenarios run on both clients --------------------------------------------------


@dataclass
class Scenario:
    replies: list[Reply]
    expect: list[str]  # one per request: status code or TransportFailure kind
    timeout: float = 5.0
    connections: int | None = None  # TCP connections the server saw
    body: bytes | None = None  # body of the last answer


SCENARIOS = {
    "json": Scenario([Reply(200, {"ok": True})], ["200"], body=b'{"ok": true}'),
    "chunked": Scenario(
        [Reply(200, {"x": "y" * 40}, chunked=True)],
        ["200"],
        body=json.dumps({"x": "y" * 40}).encode(),
    ),
    "5xx": Scenario([error(503, "unavailable", "later", **{"Retry-After": "3"})], ["503"]),
    "keep-alive": Scenario(
        [Reply(200), Reply(201), Reply(202)], ["200", "201", "202"], connections=1
    ),
    "connection-close": Scenario(
        [Reply(200, close=True), Reply(200)], ["200", "200"], connections=2
    ),
    "stale-pooled-connection": Scenario(
        [Reply(200, hangup=True), Reply(204)], ["200", "204"], connections=2
    ),
    "timeout": Scenario(
        [Reply(200, delay=3.0), Reply(200)], ["timeout", "200"], timeout=0.3, connections=2
    ),
    "drop-without-answer": Scenario([Reply(drop=True), Reply(200)], ["broken", "200"]),
    "drop-mid-answer": Scenario(
        [Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"), Reply(200)],
        ["broken", "200"],
    ),
    "garbage": Scenario([Reply(raw=b"SSH-2.0-OpenSSH\r\n\r\n")], ["broken"]),
}


def _check_scenario(
    server: ApiServer, sc: Scenario, answers: list[Response | TransportFailure]
) -> None:
    for answer, kind in zip(answers, sc.expect, strict=True):
        check(answer, kind)
    if sc.body is not None:
        last = answers[-1]
        assert isinstance(last, Response) and last.body == sc.body
    if sc.connections is not None:
        assert server.connections == sc.connections
    assert all(seen.path == "/v1/whoami" for seen in server.requests)


@pytest.mark.parametrize("name", SCENARIOS)
def test_sync_client_scenarios(server: ApiServer, name: str) -> None:
    sc = SCENARIOS[name]
    server.add(*sc.replies)
    with SyncCloudClient(server.url, timeout=sc.timeout) as client:
        answers = [client.send(WHOAMI) for _ in sc.expect]
    _check_scenario(server, sc, answers)


@pytest.mark.anyio
@pytest.mark.parametrize("name", SCENARIOS)
async def test_async_client_scenarios(server: ApiServer, name: str) -> None:
    sc = SCENARIOS[name]
    server.add(*sc.replies)
    async with AsyncCloudClient(server.url, timeout=sc.timeout) as client:
        answers = [await client.send(WHOAMI) for _ in sc.expect]
    _check_scenario(server, sc, answers)


# -- connection refused, prefixes, proxies -------------------------------------------


def test_sync_connection_refused_is_a_connect_failure() -> None:
    with SyncCloudClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        answer = client.send(WHOAMI)
    assert isinstance(answer, TransportFailure) and answer.kind == "connect"
    assert "cannot connect" in answer.detail


@pytest.mark.anyio
async def test_async_connection_refused_is_a_connect_failure() -> None:
    async with AsyncCloudClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        answer = await client.send(WHOAMI)
    assert isinstance(answer, TransportFailure) and answer.kind == "connect"


def test_sync_base_url_prefix_and_host_header(server: ApiServer) -> None:
    server.add(Reply(200))
    with SyncCloudClient(server.url + "/api/") as client:
        check(client.send(whoami_request(TOKEN)), "200")
    seen = server.requests[0]
    assert seen.path == "/api/v1/whoami"
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.anyio
async def test_async_base_url_prefix(server: ApiServer) -> None:
    server.add(Reply(200))
    async with AsyncCloudClient(server.url + "/api") as client:
        check(await client.send(whoami_request(TOKEN)), "200")
    assert server.requests[0].path == "/api/v1/whoami"


PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


@pytest.fixture
def bogus_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every proxy variable points at a port where nothing listens."""
    for name in PROXY_VARS:
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.mark.usefixtures("bogus_proxy")
def test_sync_client_ignores_proxy_variables(server: ApiServer) -> None:
    server.add(Reply(200, {"direct": True}))
    with SyncCloudClient(server.url) as client:
        check(client.send(WHOAMI), "200")
    assert len(server.requests) == 1


@pytest.mark.anyio
@pytest.mark.usefixtures("bogus_proxy")
async def test_async_client_ignores_proxy_variables(server: ApiServer) -> None:
    server.add(Reply(200, {"direct": True}))
    async with AsyncCloudClient(server.url) as client:
        check(await client.send(WHOAMI), "200")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "https://"),
        ("api.haltonmeter.com", "https://"),
        ("https://", "no host"),
        ("https://x/?a=1", "query"),
        ("https://user:pw@x", "credentials"),
        ("http://x:notaport", "cannot use"),
    ],
)
def test_bad_base_urls_say_what_to_use(url: str, message: str) -> None:
    with pytest.raises(BadBaseUrl, match=message) as info:
        SyncCloudClient(url)
    assert "https://api.haltonmeter.com" in str(info.value)


def test_base_url_forms() -> None:
    url = parse_base_url("https://api.haltonmeter.com")
    assert (url.host, url.port, url.path_prefix, url.host_header) == (
        "api.haltonmeter.com",
        443,
        "",
        "api.haltonmeter.com",
    )
    url = parse_base_url("http://[::1]:8080/p/")
    assert (url.host, url.port, url.path_prefix, url.host_header) == (
        "::1",
        8080,
        "/p",
        "[::1]:8080",
    )
    assert str(url) == "http://[::1]:8080/p"


def test_missing_cafile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CloudClientError, match="CA file"):
        SyncCloudClient("https://x", cafile=str(tmp_path / "nope.pem"))


# -- TLS with a throwaway CA ---------------------------------------------------------


@dataclass
class ThrowawayCA:
    cafile: str
    server_context: ssl.SSLContext
    files: list[Path] = field(default_factory=list)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: str | None,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    folder = tmp_path_factory.mktemp("ca")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("hm test CA", ca_key, ca_key, None, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = _cert("localhost", leaf_key, ca_key, "hm test CA", ca=False)
    cafile = folder / "ca.pem"
    cafile.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain = folder / "server.pem"
    chain.write_bytes(
        leaf_cert.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return ThrowawayCA(str(cafile), context)


@pytest.fixture
def tls_server(test_ca: ThrowawayCA) -> Iterator[ApiServer]:
    with running_server(test_ca.server_context) as srv:
        yield srv


def test_sync_tls_with_cafile_and_without(tls_server: ApiServer, test_ca: ThrowawayCA) -> None:
    tls_server.add(Reply(200, {"tls": True}), Reply(200))
    with SyncCloudClient(tls_server.url, timeout=5, cafile=test_ca.cafile) as client:
        check(client.send(WHOAMI), "200")
        check(client.send(WHOAMI), "200")
    assert tls_server.connections == 1
    with SyncCloudClient(tls_server.url, timeout=5) as client:  # system + certifi trust only
        answer = client.send(WHOAMI)
    assert isinstance(answer, TransportFailure) and answer.kind == "connect"
    assert "TLS" in answer.detail and "certificate" in answer.detail


@pytest.mark.anyio
async def test_async_tls_with_cafile_and_without(
    tls_server: ApiServer, test_ca: ThrowawayCA
) -> None:
    tls_server.add(Reply(200, {"tls": True}), Reply(200))
    async with AsyncCloudClient(tls_server.url, timeout=5, cafile=test_ca.cafile) as client:
        check(await client.send(WHOAMI), "200")
        check(await client.send(WHOAMI), "200")
    assert tls_server.connections == 1
    async with AsyncCloudClient(tls_server.url, timeout=5) as client:
        answer = await client.send(WHOAMI)
    assert isinstance(answer, TransportFailure) and answer.kind == "connect"
    assert "TLS" in answer.detail


# -- pairing drivers -------------------------------------------------------------------


class FakePairingBackend:
    """Answers start, then the scripted poll answers (then ``default``)."""

    def __init__(
        self, polls: list[str], default: str = "pending", expires_in: float = 30.0
    ) -> None:
        self.polls = list(polls)
        self.default = default
        self.expires_in = expires_in

    def __call__(self, seen: SeenRequest) -> Reply:
        if seen.path.endswith("/v1/pairing/start"):
            return Reply(
                200,
                {
                    "device_code": "dc",
                    "user_code": "WXJ49KMN",
                    "verification_uri": "http://app/connect",
                    "verification_uri_complete": "http://app/connect?code=WXJ4-9KMN",
                    "expires_in": self.expires_in,
                    "interval": 0.05,
                },
            )
        kind = self.polls.pop(0) if self.polls else self.default
        if kind == "approved":
            return Reply(
                200,
                {
                    "token": TOKEN,
                    "workspace_id": "ws",
                    "workspace_slug": "acme-co",
                    "workspace_name": "Acme",
                    "machine_id": MACHINE,
                },
            )
        if kind == "503":
            return error(503, "unavailable")
        return error(400, kind)


def new_pairing() -> PairingClient:
    return PairingClient(MACHINE, "vk.local", "Linux", "0.2.1", None, wait=1)


PAIRING_CASES: dict[str, tuple[list[str], str, Callable[[object], bool]]] = {
    "approved": (
        ["authorization_pending", "503", "approved"],
        "pending",
        lambda r: isinstance(r, Approved),
    ),
    "denied": (["access_denied"], "pending", lambda r: r == Denied()),
    "server-expired": (["expired_token"], "pending", lambda r: r == Expired(by_server=True)),
    "local-expiry": ([], "authorization_pending", lambda r: r == Expired(by_server=False)),
}


@pytest.mark.parametrize("case", PAIRING_CASES)
def test_run_pairing_sync(server: ApiServer, case: str) -> None:
    polls, default, ok = PAIRING_CASES[case]
    server.handler = FakePairingBackend(polls, default, expires_in=0.4)
    codes: list[CodeIssued] = []
    pairing = new_pairing()
    with SyncCloudClient(server.url + "/prefix", timeout=5) as client:
        result = run_pairing(client, pairing, codes.append)
    assert ok(result), result
    assert [c.user_code for c in codes] == ["WXJ4-9KMN"]
    assert server.requests[0].json()["machine_id"] == MACHINE
    assert server.requests[1].json() == {"device_code": "dc", "wait": 1}


@pytest.mark.anyio
@pytest.mark.parametrize("case", PAIRING_CASES)
async def test_run_pairing_async(server: ApiServer, case: str) -> None:
    polls, default, ok = PAIRING_CASES[case]
    server.handler = FakePairingBackend(polls, default, expires_in=0.4)
    codes: list[CodeIssued] = []
    async with AsyncCloudClient(server.url, timeout=5) as client:
        result = await run_pairing_async(client, new_pairing(), codes.append)
    assert ok(result), result
    assert len(codes) == 1


def test_ctrl_c_cancels_sync_pairing(server: ApiServer) -> None:
    server.handler = FakePairingBackend([], "authorization_pending")
    pairing = new_pairing()

    def interrupt(event: object) -> None:
        if isinstance(event, Pending):
            raise KeyboardInterrupt

    with SyncCloudClient(server.url) as client, pytest.raises(KeyboardInterrupt):
        run_pairing(client, pairing, lambda code: None, on_event=interrupt)
    assert pairing.state is PairingState.CANCELLED
    assert len(server.requests) == 2  # start and one poll, nothing after


@pytest.mark.anyio
async def test_cancelling_the_task_cancels_async_pairing(server: ApiServer) -> None:
    server.handler = FakePairingBackend([], "authorization_pending")
    pairing = new_pairing()
    async with AsyncCloudClient(server.url) as client, anyio.create_task_group() as tg:
        answered = anyio.Event()

        def on_event(event: object) -> None:
            if isinstance(event, Pending):
                answered.set()  # the driver sleeps next: cancel it there

        async def pair() -> None:
            await run_pairing_async(client, pairing, lambda code: None, on_event=on_event)

        tg.start_soon(pair)
        await answered.wait()
        tg.cancel_scope.cancel()
    assert pairing.state is PairingState.CANCELLED
    await anyio.sleep(0.2)  # a poll every 0.05 s would show up here
    assert [seen.path for seen in server.requests] == ["/v1/pairing/start", "/v1/pairing/poll"]


def test_unreachable_cloud_fails_pairing_with_a_hint() -> None:
    # How many starts to try is hm_proto's rule (PairingClient start_attempts).
    pairing = PairingClient(MACHINE, "vk.local", "Linux", "0.2.1", None, wait=1, start_attempts=2)
    retries: list[tuple[int, int]] = []
    with SyncCloudClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(PairingFailed, match="check the network and --base-url"):
            run_pairing(client, pairing, lambda code: None, sleep=lambda s: None,
                        on_retry=lambda attempt, attempts, event, delay: retries.append((attempt, attempts)))
    assert retries == [(1, 2)]
    assert pairing.state is PairingState.FAILED and pairing.outcome is not None
    assert pairing.outcome.error == "unreachable"


@pytest.mark.anyio
async def test_wrong_base_url_fails_pairing_with_a_hint(server: ApiServer) -> None:
    server.add(error(404, "not_found", "no such route"))
    async with AsyncCloudClient(server.url) as client:
        with pytest.raises(
            PairingFailed, match=r"404 not_found: no such route\); check --base-url"
        ):
            await run_pairing_async(client, new_pairing(), lambda code: None)


def test_start_retries_then_succeeds(server: ApiServer) -> None:
    server.add(error(503, "unavailable", **{"Retry-After": "0"}))
    server.handler = FakePairingBackend(["approved"])
    sleeps: list[float] = []
    with SyncCloudClient(server.url) as client:
        result = run_pairing(client, new_pairing(), lambda code: None, sleep=sleeps.append)
    assert isinstance(result, Approved)
    assert sleeps and 0 < sleeps[0] <= 1.0


# -- against the real backend (hm_cloud in a subprocess) ------------------------------

PASSWORD = "correct-horse-1"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed_sync.py"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloudclient")) as server:
        server.create_user("carol@example.com", PASSWORD, "acme")
        yield server


@pytest.mark.slow
@pytest.mark.anyio
async def test_async_client_pairs_and_revokes_against_hm_cloud(cloud: CloudServer) -> None:
    session = cloud.login_session("carol@example.com", PASSWORD)

    def approve(code: CodeIssued) -> None:
        assert cloud.approve(code.user_code, "acme", session).status_code == 200

    async with AsyncCloudClient(cloud.base_url, timeout=10) as client:
        result = await run_pairing_async(client, new_pairing(), approve)
        assert isinstance(result, Approved) and result.workspace_slug == "acme"
        who = parse_whoami(await client.send(whoami_request(result.token)))
        assert isinstance(who, WhoAmI) and who.machine_id == MACHINE and who.hostname == "vk.local"
        reconciler = Reconciler.last_days("2026-11-24", 7)
        totals = reconciler.receive_totals(
            await client.send(reconciler.totals_request(result.token)), {}
        )
        assert isinstance(totals, ReconcileResult) and totals.in_sync
        assert receive_revoke(await client.send(revoke_request(result.token))) == Revoked()
        again = receive_revoke(await client.send(revoke_request(result.token)))
        assert isinstance(again, Revoked)  # api.md: 200 again (or 401): done either way
        assert isinstance(
            parse_whoami(await client.send(whoami_request(result.token))), Unauthorised
        )


@pytest.mark.slow
def test_embed_sync_example_runs_end_to_end(cloud: CloudServer) -> None:
    session = cloud.login_session("carol@example.com", PASSWORD)
    command = [sys.executable, str(EXAMPLE), "--base-url", cloud.base_url, "--workspace", "acme"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        code = None
        for line in process.stdout:
            if "Pairing code:" in line:
                code = line.split("Pairing code:")[1].strip()
            if "Approve at:" in line:
                break
        assert code, process.stderr.read() if process.stderr else ""
        assert cloud.approve(code, "acme", session).status_code == 200
        rest, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, errors
    assert "● Workspace: acme" in rest
    assert "POST /v1/requests/batch → 200" in rest
    assert "in sync" in rest
    assert "Token revoked." in rest


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP but never says a word (a TLS handshake hangs)."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def test_sync_tls_handshake_that_hangs_is_a_timeout(silent_listener: int) -> None:
    with SyncCloudClient(f"https://127.0.0.1:{silent_listener}", timeout=0.3) as client:
        answer = client.send(WHOAMI)
    assert isinstance(answer, TransportFailure) and answer.kind == "timeout"
    assert "no connection" in answer.detail


@pytest.mark.anyio
async def test_async_tls_handshake_that_hangs_is_a_timeout(silent_listener: int) -> None:
    async with AsyncCloudClient(f"https://127.0.0.1:{silent_listener}", timeout=0.3) as client:
        answer = await client.send(WHOAMI)
    assert isinstance(answer, TransportFailure) and answer.kind == "timeout"
    assert "no connection" in answer.detail
