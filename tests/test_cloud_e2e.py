"""The product page's whole story, end to end: pair, capture, sync, verify,
pause, revoke, re-pair, disconnect, a second machine.

Real parts only: the backend (`halton-meter-cloud serve`) and the daemon
(`halton-meter start`) as subprocesses in temp homes, approval clicked in
Chromium (Playwright), calls made with the official openai SDK through the
daemon's proxy to a local TLS upstream, rows in the real SQLite files.
"""

from __future__ import annotations

import html
import json
import re
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, expect

from tests.support.cloudserver import CloudServer, cloud_command, running_cloud
from tests.support.daemon import HALTON_METER, Daemon, capture_host_config, running_daemon
from tests.support.tls import CertAuthority, LocalTLSServer

pytestmark = pytest.mark.slow

PASSWORD = "story-pass-1"
API_KEY = "sk-proj-storySECRETkey0123456789"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud")) as server:
        server.create_user("vk@example.com", PASSWORD, "acme-co")
        yield server


def start_connect(d: Daemon, cloud: CloudServer, *extra: str) -> tuple[subprocess.Popen[str], str, str]:
    """Run `cloud connect` in the background; return it with the code and approve URL it printed."""
    proc = subprocess.Popen(
        [*HALTON_METER, "cloud", "connect", "--no-browser", "--base-url", cloud.base_url, *extra],
        env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    code = url = None
    deadline = time.monotonic() + 40
    seen = ""
    while time.monotonic() < deadline and not (code and url):
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if m := re.search(r"Pairing code: (\S{4}-\S{4})", line):
            code = m.group(1)
        if m := re.search(r"Approve at: (\S+)", line):
            url = m.group(1)
    if not (code and url):
        proc.kill()
        raise AssertionError(f"no code printed: {seen} {proc.stderr.read() if proc.stderr else ''}")
    assert "Requesting pairing code from 127.0.0.1" in seen
    return proc, code, url


def approve_in_browser(browser: Browser, cloud: CloudServer, url: str, code: str, hostname: str | None,
                       expect_workspace: str = "acme-co") -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("Email").fill("vk@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Approve this machine?")).to_be_visible()
        expect(page.locator("dl.facts")).to_contain_text(code)
        if hostname:
            expect(page.locator("dl.facts")).to_contain_text(hostname)
        expect(page.get_by_label("Workspace")).to_have_value(expect_workspace)
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_role("heading", name="Machine approved")).to_be_visible()
    finally:
        context.close()


def finish_connect(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"cloud connect failed: {out} {err}"
    return out


def llm_calls(d: Daemon, upstream: LocalTLSServer, n: int) -> None:
    trust = ssl.create_default_context(cafile=str(d.ca_cert_path))
    with httpx.Client(proxy=d.proxy_url, verify=trust, timeout=20) as http:
        client = openai.OpenAI(api_key=API_KEY, base_url=f"{upstream.url}/v1", http_client=http, max_retries=0)
        for i in range(n):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}])


def db_rows(d: Daemon) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT id, synced_at FROM requests")]


def cloud_status(d: Daemon) -> dict[str, Any]:
    out = d.cli("cloud", "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def token_of(d: Daemon) -> str:
    """The sync token: stored only encrypted (db.sqlite), its key in cloud.key."""
    from hm_agent.cloudlink import load_credentials
    from hm_agent.home import paths

    return load_credentials(paths(d.home)).token


def cloud_totals(cloud: CloudServer, token: str) -> int:
    answer = httpx.get(f"{cloud.base_url}/v1/requests/totals", params={"from_date": "2026-01-01", "to_date": "2027-12-31"},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return sum(day["rows"] for day in answer.json()["days"])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_pairing_page_story(backend: str, cloud: CloudServer, ca: CertAuthority, upstream: LocalTLSServer,
                                browser: Browser, tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = capture_host_config([f"localhost:{upstream.port}"])
    with running_daemon(home, backend, extra_config=config, upstream_ca=ca.ca_path) as d:
        # Before pairing: nothing flows.
        assert cloud_status(d)["state"] == "NOT-CONFIGURED"
        assert d.status()["cloud"]["state"] == "NOT-CONFIGURED"
        llm_calls(d, upstream, 3)
        d.wait_rows(3)

        # cloud connect → approve in the browser (the trio run pre-selects the workspace).
        extra = ("--workspace", "acme-co") if backend == "trio" else ()
        proc, code, url = start_connect(d, cloud, *extra)
        assert re.fullmatch(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}", code)
        assert url == f"{cloud.app_url}/connect?code={code}"
        approve_in_browser(browser, cloud, url, code, hostname=None)
        out = finish_connect(proc)
        assert "Paired with workspace" in out and "acme-co" in out

        # The four things pairing writes, with their modes.
        creds = home / "cloud-credentials.json"
        key = home / "cloud.key"
        assert oct(creds.stat().st_mode & 0o777) == "0o600"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        token = token_of(d)
        assert token.startswith("hm_sync_")
        config_text = (home / "config.toml").read_text()
        assert "enabled = true" in config_text and f'base_url = "{cloud.base_url}"' in config_text
        assert re.search(r'workspace_id = "[0-9a-f-]{36}"', config_text)
        assert "[proxy]" in config_text  # the rest of the file survived the rewrite
        with sqlite3.connect(d.db_path) as conn:
            state = conn.execute(
                "SELECT workspace_slug, machine_id, hostname, api_key_ciphertext FROM cloud_state"
            ).fetchone()
        from cryptography.fernet import Fernet

        assert state[0] == "acme-co"
        assert Fernet(key.read_bytes()).decrypt(state[3]).decode() == token
        assert token.encode() not in state[3]
        assert token.encode() not in creds.read_bytes()  # the token is kept only encrypted
        machine_id = json.loads((home / "machine.json").read_text())["machine_id"]
        assert state[1] == machine_id

        # The worker starts on its own and uploads what was captured before pairing.
        wait_for(lambda: cloud_totals(cloud, token) == 3, what="the 3 pre-pairing rows in the cloud")
        status = wait_for(lambda: (s := cloud_status(d))["unsynced_rows"] == 0 and s, what="synced")
        assert status["state"] == "ACTIVE" and status["last_sync_at"]
        assert all(r["synced_at"] for r in db_rows(d))

        whoami = d.cli("cloud", "whoami")
        assert whoami.returncode == 0
        assert "Workspace: acme-co" in whoami.stdout and f"Machine id: {machine_id}" in whoami.stdout
        human = d.cli("cloud", "status").stdout
        for line in ("State: ACTIVE", "Last sync: ", "Unsynced rows: 0", "Last reconcile: "):
            assert line in human

        # Connecting again while paired says so, and how to re-pair.
        again = d.cli("cloud", "connect", "--no-browser", "--base-url", cloud.base_url)
        assert again.returncode == 1
        assert "already paired with workspace acme-co" in again.stderr and "cloud disconnect" in again.stderr

        # Reconcile (R1): the cloud loses a row; `cloud sync --reconcile` finds the day and re-sends it.
        # (A row deleted by hand in SQL: the operator then rebuilds the rollups, as docs/cloud.md says.)
        lost = db_rows(d)[0]["id"]
        with sqlite3.connect(cloud.db_url.removeprefix("sqlite:///"), timeout=10) as conn:
            assert conn.execute("DELETE FROM usage_rows WHERE id = ?", (lost,)).rowcount == 1
        rebuilt = subprocess.run(cloud_command("rollups", "--rebuild", "--db", cloud.db_url),
                                 capture_output=True, text=True, timeout=120)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert cloud_totals(cloud, token) == 2
        rec = d.cli("cloud", "sync", "--reconcile")
        assert rec.returncode == 0, rec.stderr
        assert re.search(r"Reconcile \S+\.\.\S+: 1 day\(s\) re-sent, 3 rows", rec.stdout), rec.stdout
        wait_for(lambda: cloud_totals(cloud, token) == 3, what="the lost row re-sent")

        # cloud sync: upload now, with the page's line.
        d.cli("cloud", "pause")
        llm_calls(d, upstream, 2)
        d.wait_rows(5)
        paused = cloud_status(d)
        assert paused["state"] == "PAUSED" and paused["paused_reason"] == "user"
        refused = d.cli("cloud", "sync")
        assert refused.returncode == 1 and "cloud resume" in refused.stderr
        assert d.cli("cloud", "resume").returncode == 0
        synced = d.cli("cloud", "sync")
        assert synced.returncode == 0, synced.stderr
        if "Nothing to upload" not in synced.stdout:  # the worker may have beaten us to it
            assert re.search(r"POST /v1/requests/batch → 200 OK \(2 rows accepted\)", synced.stdout)
        assert cloud_totals(cloud, token) == 5

        # The devices page lists this machine; revoke it there.
        session = cloud.login_session("vk@example.com", PASSWORD)
        devices = session.get("/acme-co/settings/devices").text
        assert machine_id in devices
        device_ids = re.findall(r"/acme-co/settings/devices/([^/\"]+)/revoke", devices)
        revoke = session.post(f"/acme-co/settings/devices/{device_ids[-1]}/revoke",
                              data={"csrf_token": cloud.csrf(session, "/acme-co/settings/devices")})
        assert revoke.status_code in (200, 303)

        # Next sync → 401 → PAUSED paused_unauthorised.
        llm_calls(d, upstream, 1)
        d.wait_rows(6)
        d.cli("cloud", "sync")
        revoked = wait_for(lambda: (s := cloud_status(d))["state"] == "PAUSED" and s, what="PAUSED after 401")
        assert revoked["paused_reason"] == "paused_unauthorised"
        assert revoked["unsynced_rows"] == 1
        # Resuming is allowed (SyncSession's rule: the server decides); the revoked token
        # gets 401 again and the worker pauses again.
        resumed = d.cli("cloud", "resume")
        assert resumed.returncode == 0 and "cloud connect" in resumed.stdout, resumed.stdout
        d.cli("cloud", "sync")
        again = wait_for(lambda: (s := cloud_status(d))["state"] == "PAUSED" and s, what="PAUSED again")
        assert again["paused_reason"] == "paused_unauthorised"

        # cloud connect again fixes it; the device entry is replaced, not duplicated.
        proc, code, url = start_connect(d, cloud)
        approve_in_browser(browser, cloud, url, code, hostname=None)
        finish_connect(proc)
        new_token = token_of(d)
        assert new_token != token
        wait_for(lambda: cloud_status(d)["state"] == "ACTIVE", what="ACTIVE after re-pairing")
        wait_for(lambda: cloud_totals(cloud, new_token) == 6, what="all 6 rows in the cloud")
        devices = session.get("/acme-co/settings/devices").text
        assert devices.count(machine_id) == 1

        # Disconnect: revoke at the backend, wipe locally; capture and report go on.
        bye = d.cli("cloud", "disconnect")
        assert bye.returncode == 0, bye.stderr
        assert "Token revoked." in bye.stdout and "credentials wiped" in bye.stdout
        assert bye.stdout.count("Revoking token at") == 1, bye.stdout  # once, not twice
        assert not creds.exists() and not key.exists()
        assert "enabled = false" in (home / "config.toml").read_text()
        assert cloud_status(d)["state"] == "NOT-CONFIGURED"
        with sqlite3.connect(d.db_path) as conn:
            assert conn.execute("SELECT count(*) FROM cloud_state").fetchone()[0] == 0
        gone = httpx.get(f"{cloud.base_url}/v1/whoami", headers={"Authorization": f"Bearer {new_token}"})
        assert gone.status_code == 401
        llm_calls(d, upstream, 1)
        d.wait_rows(7)
        report = d.cli("report", "--json")
        assert report.returncode == 0, report.stderr
        assert API_KEY not in report.stdout

    # The key that passed through the proxy is nowhere in the home.
    for path in home.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def test_connect_errors_are_one_line_with_the_fix(cloud: CloudServer, tmp_path: Path) -> None:
    from tests.support.daemon import run_cli

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    down = run_cli(home, "cloud", "connect", "--no-browser", "--base-url", cloud.base_url)
    assert down.returncode == 1
    assert "halton-meter status" in down.stderr and "halton-meter start" in down.stderr
    assert "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1

    with running_daemon(home) as d:
        bad = d.cli("cloud", "connect", "--no-browser", "--base-url", "http://127.0.0.1:1")
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert "127.0.0.1:1" in bad.stderr
        for cmd in (("cloud", "sync"), ("cloud", "whoami"), ("cloud", "pause")):
            out = d.cli(*cmd)
            assert out.returncode == 1 and "cloud connect" in out.stderr and "Traceback" not in out.stderr
        nothing = d.cli("cloud", "disconnect")
        assert nothing.returncode == 0 and "not paired" in nothing.stdout


def test_second_machine_joins_the_same_dashboard(cloud: CloudServer, ca: CertAuthority, upstream: LocalTLSServer,
                                                 browser: Browser, tmp_path: Path) -> None:
    config = capture_host_config([f"localhost:{upstream.port}"])
    cloud.create_user("lead@example.com", PASSWORD, "team-two")  # a workspace of its own
    machines = []
    for name in ("laptop-a", "laptop-b"):
        home = tmp_path / name
        with running_daemon(home, extra_config=config, upstream_ca=ca.ca_path) as d:
            llm_calls(d, upstream, 2)
            d.wait_rows(2)
            proc, code, url = start_connect(d, cloud)
            session = cloud.login_session("lead@example.com", PASSWORD)
            assert cloud.approve(code, "team-two", session).status_code == 200
            finish_connect(proc)
            token = token_of(d)
            wait_for(lambda t=token: cloud_totals(cloud, t) == 2, what=f"{name}'s rows")
            machines.append(json.loads((home / "machine.json").read_text())["machine_id"])
            # Re-pairing with the same machine.json keeps the device.
            assert d.cli("cloud", "disconnect").returncode == 0
            proc, code, url = start_connect(d, cloud)
            assert cloud.approve(code, "team-two", session).status_code == 200
            finish_connect(proc)
            devices = session.get("/team-two/settings/devices").text
            assert devices.count(machines[-1]) == 1
    today = time.strftime("%Y-%m-%d", time.gmtime())
    dashboard = session.get("/team-two/", params={"from_date": today, "to_date": today}).text
    by_machine = dashboard.split('id="machines-h"', 1)[1].split("</section>", 1)[0]
    # Both laptops share this test machine's hostname: two rows, told apart by machine id.
    host = html.escape(socket.gethostname())
    assert by_machine.count(f'title="Show only {host}">{host}</a>') == 2, by_machine
    for machine in machines:
        assert f'title="machine id {machine}"' in by_machine


def _expire_code(cloud: CloudServer, code: str) -> None:
    """Move the code's expiry into the past in the backend's own database."""
    db = cloud.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute("UPDATE pairings SET expires_at = 0 WHERE user_code = ?", (code.replace("-", ""),))


def test_expired_denied_and_cancelled_pairings_leave_nothing_behind(cloud: CloudServer, tmp_path: Path) -> None:
    import signal

    home = tmp_path / "home"
    with running_daemon(home) as d:
        leftovers = ("cloud-credentials.json", "cloud.key")

        proc, code, _ = start_connect(d, cloud)
        _expire_code(cloud, code)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "expired" in err and "cloud connect" in err and "fresh code" in err

        proc, code, _ = start_connect(d, cloud)
        session = cloud.login_session("vk@example.com", PASSWORD)
        assert cloud.approve(code, "acme-co", session, decision="deny").status_code == 200
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "denied" in err

        proc, code, _ = start_connect(d, cloud)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, (out, err)
        assert "Cancelled" in out and "Traceback" not in err
        # The daemon stopped polling: approving the abandoned code now pairs nothing.
        cloud.approve(code, "acme-co", session)
        time.sleep(1.0)
        for name in leftovers:
            assert not (home / name).exists()
        assert cloud_status(d)["state"] == "NOT-CONFIGURED"
        assert "enabled = false" in (home / "config.toml").read_text()


def test_an_explicit_cloud_proxy_carries_pairing_and_sync(cloud: CloudServer, upstream: LocalTLSServer,
                                                         ca: CertAuthority, tmp_path: Path) -> None:
    from tests.support.connectproxy import ConnectProxy

    with ConnectProxy() as proxy:
        config = (capture_host_config([f"localhost:{upstream.port}"])
                  + f'\n[cloud]\nenabled = false\nproxy = "{proxy.url}"\n')
        with running_daemon(tmp_path / "home", extra_config=config, upstream_ca=ca.ca_path) as d:
            llm_calls(d, upstream, 2)
            d.wait_rows(2)
            proc, code, _ = start_connect(d, cloud)
            assert cloud.approve(code, "acme-co", cloud.login_session("vk@example.com", PASSWORD)).status_code == 200
            finish_connect(proc)
            token = token_of(d)
            wait_for(lambda: cloud_totals(cloud, token) == 2, what="rows uploaded through the proxy")
            backend = cloud.base_url.split("//", 1)[1]
            assert proxy.tunnels and all(t == backend for t in proxy.tunnels)
            assert "proxy" in (tmp_path / "home" / "config.toml").read_text()  # kept by the rewrite
