"""The examples, each run against a real halton-meter-cloud (docs: proto/README.md)."""

from __future__ import annotations

import os
import re
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.support.cloudserver import CloudServer, running_cloud
from tests.support.fake_providers import FakeProviders
from tests.support.tls import CertAuthority

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PASSWORD = "correct-horse-1"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    with running_cloud(tmp_path / "cloud") as server:
        server.create_user("erin@example.com", PASSWORD, "acme")
        yield server


def cloud_rows(cloud: CloudServer, token: str) -> int:
    """Rows the cloud holds for this token's machine, from the totals of every recent day."""
    today = datetime.now(UTC).date()
    answer = httpx.get(
        f"{cloud.base_url}/v1/requests/totals",
        params={"from_date": str(today - timedelta(days=2)), "to_date": str(today + timedelta(days=1))},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return sum(day["rows"] for day in answer.json()["days"])


def stop(process: subprocess.Popen[Any]) -> None:
    """Terminate, then kill if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def run_paired(command: list[str], cloud: CloudServer, cwd: Path, timeout: float = 90,
               env: dict[str, str] | None = None) -> str:
    """Run an example that prints a pairing code; approve it in the cloud; return its output."""
    session = cloud.login_session("erin@example.com", PASSWORD)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=cwd, env=env)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Pairing code:" in line:
                code = line.split("Pairing code:")[1].split()[0]
                assert cloud.approve(code, "acme", session).status_code == 200
                break
        rest, errors = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, errors
    return "".join(lines) + rest


def trio_program_survives_a_backend_restart(python: str, tmp_path: Path,
                                            env: dict[str, str] | None = None) -> None:
    """Example 2 (trio): pair and upload 3 rows; then, with the backend down, 2 more
    rows wait, retry with backoff, and arrive once the backend is back on its port."""
    db_url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    command = [python, str(EXAMPLES / "trio_sync.py"), "--workspace", "acme"]
    with running_cloud(tmp_path / "first", db_url=db_url) as cloud:
        cloud.create_user("erin@example.com", PASSWORD, "acme")
        out = run_paired([*command, "--base-url", cloud.base_url, "--rows", "3"], cloud, tmp_path,
                         env=env)
        assert "● Paired with workspace acme" in out and "3 rows in the cloud, 0 waiting" in out
        base_url = cloud.base_url
    token = (tmp_path / "meter-token").read_text().strip()
    assert oct((tmp_path / "meter-token").stat().st_mode & 0o777) == "0o600"
    process = subprocess.Popen([*command, "--base-url", base_url, "--rows", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path, env=env)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "retrying" in line:  # the backend is down: the rows wait, nothing is lost
                break
        port = base_url.rsplit(":", 1)[1]
        with running_cloud(tmp_path / "second", db_url=db_url, extra_args=("--port", port)) as back:
            rest, errors = process.communicate(timeout=120)
            assert process.returncode == 0, errors
            assert "5 rows in the cloud, 0 waiting" in rest
            assert cloud_rows(back, token) == 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH: the program imports what its interpreter has."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.slow
def test_trio_program_pairs_uploads_and_survives_a_backend_restart(tmp_path: Path) -> None:
    trio_program_survives_a_backend_restart(sys.executable, tmp_path)


@pytest.mark.slow
def test_mitmproxy_addon_meters_a_call_and_syncs_it(cloud: CloudServer, ca: CertAuthority,
                                                    tmp_path: Path) -> None:
    """Example 1: someone else's mitmdump with examples/mitmproxy_addon.py meters an
    official-SDK call through it and uploads the row with SyncSession (ack-then-commit)."""
    import openai

    port = free_port()
    hm_dir = tmp_path / "hm"
    command = [
        str(Path(sys.executable).parent / "mitmdump"), "-s", str(EXAMPLES / "mitmproxy_addon.py"),
        "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={tmp_path / 'mitm'}", "--set", f"ssl_verify_upstream_trusted_ca={ca.ca_path}",
        "--set", f"hm_base_url={cloud.base_url}", "--set", "hm_workspace=acme",
        "--set", f"hm_dir={hm_dir}",
    ]
    session = cloud.login_session("erin@example.com", PASSWORD)
    out_path = tmp_path / "mitmdump.out"
    with open(out_path, "w") as out, FakeProviders(ca) as providers:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            code = wait_for(lambda: re.search(r"Pairing code: (\S+)", out_path.read_text()),
                            what="the addon's pairing code", timeout=60).group(1)
            assert cloud.approve(code, "acme", session).status_code == 200
            wait_for(lambda: "Paired with workspace acme" in out_path.read_text(), what="paired")
            proxy = f"http://127.0.0.1:{port}"
            mitm_ca = tmp_path / "mitm" / "mitmproxy-ca-cert.pem"
            with httpx.Client(proxy=proxy, verify=ssl.create_default_context(cafile=str(mitm_ca))) as http_client:
                client = openai.OpenAI(api_key="sk-test-not-a-real-key",
                                       base_url=f"{providers.base_url}/v1", http_client=http_client)
                reply = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert reply.usage is not None
            wait_for(lambda: "uploaded 1 row(s)" in out_path.read_text(), what="the row uploaded",
                     timeout=60)
            token = (hm_dir / "token").read_text().strip()
            assert cloud_rows(cloud, token) == 1
            with sqlite3.connect(hm_dir / "rows.sqlite") as db:
                (row_json, synced), = db.execute("SELECT row_json, synced FROM usage_rows")
            assert synced == 1 and b"sk-test" not in row_json and b'"input_tokens":' in row_json
        finally:
            stop(process)


@pytest.mark.slow
def test_asyncio_gateway_meters_calls_and_survives_a_backend_restart(ca: CertAuthority,
                                                                     tmp_path: Path) -> None:
    """Example 2 (asyncio): the ASGI gateway under uvicorn forwards official-SDK calls,
    pairs, uploads with SyncSession, and delivers a row made while the backend was down."""
    import openai

    db_url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    port = free_port()
    out_path = tmp_path / "gateway.out"
    with running_cloud(tmp_path / "first", db_url=db_url) as cloud, FakeProviders(ca) as providers:
        cloud.create_user("erin@example.com", PASSWORD, "acme")
        env = {**os.environ, "HM_BASE_URL": cloud.base_url, "HM_WORKSPACE": "acme",
               "HM_DIR": str(tmp_path / "hm"), "UPSTREAM_URL": providers.base_url,
               "UPSTREAM_CAFILE": str(ca.ca_path), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "uvicorn", "asyncio_gateway:app", "--app-dir",
                   str(EXAMPLES), "--host", "127.0.0.1", "--port", str(port)]
        with open(out_path, "w") as out:
            gateway = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            output = out_path.read_text
            code = wait_for(lambda: re.search(r"Pairing code: (\S+)", output()),
                            what="the gateway's pairing code", timeout=60).group(1)
            session = cloud.login_session("erin@example.com", PASSWORD)
            assert cloud.approve(code, "acme", session).status_code == 200
            wait_for(lambda: "Paired with workspace acme" in output(), what="paired")
            client = openai.OpenAI(api_key="sk-test-key", base_url=f"http://127.0.0.1:{port}/v1")

            def call() -> None:
                reply = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                assert reply.usage is not None and reply.usage.prompt_tokens > 0

            call()
            wait_for(lambda: "uploaded 1 row(s)" in output(), what="the first row", timeout=60)
            token = (tmp_path / "hm" / "token").read_text().strip()
            cloud.stop()  # the backend goes down...
            call()  # ...calls are still metered...
            wait_for(lambda: "retrying" in output(), what="a retry", timeout=60)
            port_of_cloud = cloud.base_url.rsplit(":", 1)[1]
            with running_cloud(tmp_path / "second", db_url=db_url,
                               extra_args=("--port", port_of_cloud)) as back:
                # ...and uploaded once it is back.
                wait_for(lambda: output().count("uploaded 1 row(s)") == 2, what="the second row",
                         timeout=90)
                assert cloud_rows(back, token) == 2
            assert "sk-test-key" not in (tmp_path / "hm" / "rows.sqlite").read_bytes().decode("latin-1")
        finally:
            stop(gateway)
