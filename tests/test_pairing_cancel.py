"""A pairing cancelled with Ctrl-C is cancelled at the backend (issue 10, item 18).

The protocol produces the request (hm_proto, pure), the backend refuses to
approve the code afterwards and says why, and the daemon sends it when
`cloud connect` is interrupted. Also item 16's pairing half: a workspace
name with markup is printed as text once the pairing is saved.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hm_proto import (
    CallFailed,
    CancelAcknowledged,
    PairingClient,
    PairingState,
    Response,
    RetryLater,
    TransportFailure,
    receive_cancel,
)
from tests.support.cloudserver import CloudServer, cloud_command, running_cloud
from tests.support.daemon import HALTON_METER, Daemon, running_daemon

MACHINE = "0b6f0c4e-6f3a-4d55-9a43-6c1f6b0f2a11"
PASSWORD = "cancel-pass-1"
MARKUP_NAME = "[/x] Acme [bold]"


def _start_ok() -> Response:
    body = {"device_code": "dev-code-secret", "user_code": "wxj49kmn",
            "verification_uri": "https://app.example/connect",
            "verification_uri_complete": "https://app.example/connect?code=WXJ4-9KLM",
            "expires_in": 600, "interval": 5}
    return Response(200, (), json.dumps(body).encode())


# -- hm_proto: the cancel request ----------------------------------------------------------


def test_cancel_request_carries_the_device_code_only_after_a_code_was_issued() -> None:
    before = PairingClient(MACHINE, "vk.local", "Linux", "0.2.1")
    before.start_request()
    before.cancel()
    assert before.cancel_request() is None  # nobody saw a code: nothing to cancel

    client = PairingClient(MACHINE, "vk.local", "Linux", "0.2.1")
    client.start_request()
    client.receive_start(_start_ok(), 0.0)
    assert client.cancel_request() is None  # not cancelled yet
    assert client.cancel() is PairingState.CANCELLED
    request = client.cancel_request()
    assert request is not None and request.method == "POST" and request.target == "/v1/pairing/cancel"
    assert json.loads(request.body) == {"device_code": "dev-code-secret"}


@pytest.mark.parametrize(("answer", "expected"), [
    (Response(200, (), b'{"cancelled": true}'), CancelAcknowledged(known=True)),
    (Response(200, (), b'{"cancelled": false}'), CancelAcknowledged(known=False)),
    (Response(503, (), b"{}"), RetryLater),
    (TransportFailure("connect", "refused"), RetryLater),
    (Response(400, (), b'{"error": "invalid_request", "detail": "x"}'), CallFailed),
])
def test_receive_cancel(answer: Any, expected: Any) -> None:
    outcome = receive_cancel(answer)
    if isinstance(expected, type):
        assert isinstance(outcome, expected)
    else:
        assert outcome == expected


# -- the backend ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud")) as server:
        server.create_user("vk@example.com", PASSWORD, "acme-co")
        made = subprocess.run(
            cloud_command("create-user", "mk@example.com", "--workspace", "markup-co",
                          "--workspace-name", MARKUP_NAME, "--password-stdin", "--db", server.db_url),
            input=(PASSWORD + "\n").encode(), capture_output=True, timeout=60,
        )
        assert made.returncode == 0, made.stderr
        yield server


def _devices(cloud: CloudServer) -> list[dict[str, Any]]:
    import sqlite3

    db = cloud.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM devices")]


@pytest.mark.slow
def test_a_cancelled_code_cannot_be_approved_and_the_page_says_why(cloud: CloudServer) -> None:
    started = cloud.start_pairing()
    api = cloud.client()
    assert api.post("/v1/pairing/cancel", json={"device_code": started["device_code"]}).json() == {"cancelled": True}
    session = cloud.login_session("vk@example.com", PASSWORD)
    refused = cloud.approve(started["user_code"], "acme-co", session)
    assert refused.status_code == 410 and refused.json()["error"] == "pairing_cancelled"
    page = session.get("/connect", params={"code": started["user_code"]})
    assert page.status_code == 410 and "Pairing cancelled" in page.text and "cancelled on the machine" in page.text
    polled = cloud.poll(started["device_code"], wait=0)
    assert polled["status_code"] == 400 and "cancelled" in polled["detail"]
    again = api.post("/v1/pairing/cancel", json={"device_code": started["device_code"]})
    assert again.status_code == 200
    assert api.post("/v1/pairing/cancel", json={"device_code": "unknown"}).json() == {"cancelled": False}
    assert api.post("/v1/pairing/cancel", json={}).status_code in (400, 422)


@pytest.mark.slow
def test_cancelling_after_the_approval_revokes_the_minted_token_and_device(cloud: CloudServer) -> None:
    """Approved in the browser, Ctrl-C before the machine collected the token: no Active device remains."""
    machine = "7d3c0f55-0000-4000-8000-00000000c0de"
    started = cloud.start_pairing(machine_id=machine)
    session = cloud.login_session("vk@example.com", PASSWORD)
    assert cloud.approve(started["user_code"], "acme-co", session).status_code == 200
    [device] = [d for d in _devices(cloud) if d["machine_id"] == machine]
    assert device["revoked_at"] is None
    assert cloud.client().post("/v1/pairing/cancel", json={"device_code": started["device_code"]}).status_code == 200
    [device] = [d for d in _devices(cloud) if d["machine_id"] == machine]
    assert device["revoked_at"] is not None
    polled = cloud.poll(started["device_code"], wait=0)
    assert polled["status_code"] == 400 and "token" not in polled


# -- the daemon and CLI -----------------------------------------------------------------------


def _connect(d: Daemon, cloud: CloudServer) -> tuple[subprocess.Popen[str], str]:
    import re

    proc = subprocess.Popen([*HALTON_METER, "cloud", "connect", "--no-browser", "--base-url", cloud.base_url],
                            env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if m := re.search(r"Pairing code: (\S{4}-\S{4})", line):
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"no code: {seen}")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_in_cloud_connect_cancels_the_code_at_the_backend(cloud: CloudServer, tmp_path: Path,
                                                                 stop: signal.Signals) -> None:
    """Ctrl-C, and a SIGTERM alike (`kill`, `timeout`): else the code stayed approvable, unwatched."""
    with running_daemon(tmp_path / "home") as d:
        proc, code = _connect(d, cloud)
        time.sleep(0.5)  # the daemon is polling
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 128 + stop, (out, err)
        assert "can no longer be approved" in out and "Traceback" not in err
        session = cloud.login_session("vk@example.com", PASSWORD)
        refused = cloud.approve(code, "acme-co", session)
        assert refused.status_code == 410 and refused.json()["error"] == "pairing_cancelled"
        machine_id = json.loads((d.home / "machine.json").read_text())["machine_id"]
        assert not [x for x in _devices(cloud) if x["machine_id"] == machine_id and x["revoked_at"] is None]
        assert not (d.home / "cloud-credentials.json").exists()


@pytest.mark.slow
def test_a_workspace_name_with_markup_is_printed_as_text_after_pairing(cloud: CloudServer, tmp_path: Path) -> None:
    with running_daemon(tmp_path / "home") as d:
        proc, code = _connect(d, cloud)
        assert cloud.approve(code, "markup-co", cloud.login_session("mk@example.com", PASSWORD)).status_code == 200
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
        assert f"Paired with workspace {MARKUP_NAME} (markup-co)." in out and "Traceback" not in err


def test_the_suite_starts_its_cli_with_ctrl_c_at_the_default() -> None:
    """Even when the suite itself runs in the background with SIGINT ignored (conftest), so the
    SIGINT the tests above send reaches `cloud connect` as a user's Ctrl-C would."""
    probe = subprocess.run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT).__name__)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "default_int_handler"
