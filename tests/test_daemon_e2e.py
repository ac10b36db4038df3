"""The real daemon end to end: start, capture through mitmproxy, status, report, stop.

One daemon per backend for the module (asyncio and trio), a local TLS server
as the "LLM API" (a test CA the daemon trusts through
ssl_verify_upstream_trusted_ca) and real clients (curl, httpx) that trust
the daemon's CA.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.daemon import Daemon, capture_host_config, running_daemon
from tests.support.tls import CertAuthority, LocalTLSServer

pytestmark = pytest.mark.slow

SECRET = "sk-test-SECRET0123456789abcdef"
GEMINI_KEY = "AIzaSECRETQUERYKEY123456"


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def daemon(request: pytest.FixtureRequest, ca: CertAuthority, upstream: LocalTLSServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    extra = capture_host_config([f"localhost:{upstream.port}"])
    with running_daemon(home, request.param, upstream_ca=ca.ca_path, extra_config=extra) as d:
        yield d


def chat(d: Daemon, upstream: LocalTLSServer, model: str = "gpt-4o-mini", stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    with httpx.Client(proxy=d.proxy_url, verify=ssl.create_default_context(cafile=str(d.ca_cert_path)), timeout=20) as client:
        return client.post(f"{upstream.url}/v1/chat/completions?key={GEMINI_KEY}", json=body,
                           headers={"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET})


def rows(d: Daemon) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM requests ORDER BY ts").fetchall()
    finally:
        conn.close()


def test_status_is_green_with_bound_proxy(daemon: Daemon) -> None:
    out = daemon.cli("status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"mitm bound on 127.0.0.1:{daemon.proxy_port}" in out.stdout
    assert "healthy" in out.stdout and "NOT-CONFIGURED" in out.stdout
    st = daemon.status()
    assert st["daemon"]["running"] and st["daemon"]["healthy"] and st["daemon"]["backend"] == daemon.backend
    assert st["proxy"] == {"bound": True, "host": "127.0.0.1", "port": daemon.proxy_port}
    assert st["cloud"]["state"] == "NOT-CONFIGURED"
    assert st["ca_cert"] == str(daemon.ca_cert_path)


def test_capture_with_curl_and_httpx_then_report(daemon: Daemon, upstream: LocalTLSServer) -> None:
    before = len(rows(daemon))
    res = daemon.curl(f"{upstream.url}/v1/chat/completions", "-H", "content-type: application/json",
                      "-H", f"Authorization: Bearer {SECRET}", "-d", json.dumps({"model": "gpt-4o"}))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model"] == "gpt-4o"
    assert chat(daemon, upstream).status_code == 200
    assert daemon.wait_rows(before + 2) >= before + 2
    got = rows(daemon)[-2:]
    assert {r["model"] for r in got} == {"gpt-4o", "gpt-4o-mini"}
    for r in got:
        assert r["status"] == 200 and r["endpoint"] == "/v1/chat/completions"
        assert r["host"] == f"localhost:{upstream.port}"
        assert r["latency_ms"] >= 0 and r["ttfb_ms"] is not None
        assert r["ts"].endswith("Z") and len(r["ts"]) == 24
        assert json.loads(r["row_json"])["id"] == r["id"]
    rep = json.loads(daemon.cli("report", "--json").stdout)
    assert rep["total"]["calls"] >= 2
    assert daemon.status()["rows"]["today"] >= 2


def test_stream_is_not_buffered(daemon: Daemon, upstream: LocalTLSServer) -> None:
    """The client sees the first SSE event while upstream still holds the rest."""
    seen_before = {r["id"] for r in rows(daemon)}
    upstream.hold_first_event = threading.Event()
    try:
        body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}
        with httpx.Client(proxy=daemon.proxy_url, verify=ssl.create_default_context(cafile=str(daemon.ca_cert_path)), timeout=20) as client:
            with client.stream("POST", f"{upstream.url}/v1/chat/completions", json=body) as resp:
                lines = resp.iter_lines()
                first = next(lines)
                assert first.startswith("data: ")  # arrived although upstream is still holding
                upstream.hold_first_event.set()
                rest = list(lines)
        assert any("[DONE]" in line for line in rest)
    finally:
        upstream.hold_first_event.set()
        upstream.hold_first_event = None
    deadline = time.monotonic() + 10  # the writer flushes every 0.2 s; allow a loaded machine
    while not (streamed := [r for r in rows(daemon) if r["id"] not in seen_before]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(streamed) == 1 and streamed[0]["stream"] and streamed[0]["output_tokens"] == 2


def test_other_hosts_pass_through_undecrypted(daemon: Daemon, upstream: LocalTLSServer, ca: CertAuthority) -> None:
    """127.0.0.1:PORT is not a capture host: the client sees upstream's own certificate."""
    res = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--proxy", daemon.proxy_url, "--cacert", str(ca.ca_path),
         f"https://127.0.0.1:{upstream.port}/plain"],
        capture_output=True, text=True, timeout=20,
    )
    assert res.returncode == 0 and res.stdout == "ok", res.stderr


def test_api_keys_are_never_written(daemon: Daemon, upstream: LocalTLSServer) -> None:
    assert chat(daemon, upstream).status_code == 200
    daemon.wait_rows(1)
    for path in daemon.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data, path
            assert GEMINI_KEY.encode() not in data, path


def test_wake_and_unknown_control_command(daemon: Daemon) -> None:
    from hm_agent.control import ControlError, control_call

    assert control_call(daemon.home, "wake") == {"woken": True}
    with pytest.raises(ControlError, match="unknown command 'nope'"):
        control_call(daemon.home, "nope")


def test_database_locked_does_not_stall_requests(daemon: Daemon, upstream: LocalTLSServer) -> None:
    """Another process holds the write lock for 2 s: requests keep their speed, rows land afterwards."""
    before = len(rows(daemon))
    locker = subprocess.Popen(
        ["python3", "-c",
         "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(2); c.execute('ROLLBACK')",
         str(daemon.db_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        slowest = 0.0
        for _ in range(10):
            t0 = time.monotonic()
            assert chat(daemon, upstream).status_code == 200
            slowest = max(slowest, time.monotonic() - t0)
        assert slowest < 1.0, f"a request took {slowest:.2f}s while the database was locked"
        assert locker.poll() is None, "the lock ended before the requests did; the test proved nothing"
    finally:
        locker.wait(10)
    assert daemon.wait_rows(before + 10, timeout=10) >= before + 10


def test_doctor_passes_and_env_points_at_the_daemon(daemon: Daemon) -> None:
    res = daemon.cli("doctor")
    assert res.returncode == 0, res.stdout
    assert "✓ proxy request" in res.stdout and "✓ CA" in res.stdout
    env = daemon.cli("env", "--shell", "bash").stdout
    assert f"export HTTPS_PROXY='http://127.0.0.1:{daemon.proxy_port}'" in env
