"""Opt-in body sync end to end: a daemon with bodies = "sync" paired to a real backend. Nothing is
uploaded while the workspace refuses bodies; once an admin accepts them, the prompt (canary in,
key masked) reaches the cloud encrypted, an admin reads it in Chromium and a member gets 403."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from hm_cloud.db import audit_log, make_engine, request_bodies
from tests.support.cloudserver import CloudServer, running_cloud
from tests.support.daemon import capture_host_config, running_daemon
from tests.support.fake_providers import FakeProviders
from tests.support.tls import make_ca
from tests.test_bodies import PROMPT_KEY, run_program
from tests.test_cloud_e2e import finish_connect, start_connect, token_of, wait_for

pytestmark = pytest.mark.slow
PASSWORD = "correct-horse-1"




def test_body_sync_only_when_both_sides_opt_in(tmp_path: Path, browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALTON_METER_CLOUD_MASTER_KEY", Fernet.generate_key().decode())
    ca = make_ca(tmp_path / "ca")
    with FakeProviders(ca) as upstream, running_cloud(tmp_path / "cloud") as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        cloud.create_user("member@example.com", PASSWORD, "acme")
        engine = make_engine(cloud.db_url)

        def cloud_bodies() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(request_bodies)).scalar() or 0)

        extra = capture_host_config([f"localhost:{upstream.port}"]) + '[capture]\nbodies = "sync"\n'
        with running_daemon(tmp_path / "home", upstream_ca=ca.ca_path, extra_config=extra,
                            env={"HALTON_METER_BODY_SYNC_SECONDS": "0.2"}) as daemon:
            proc, code, _url = start_connect(daemon, cloud)
            owner = cloud.login_session("owner@example.com", PASSWORD)
            assert cloud.approve(code, "acme", owner).status_code == 200
            finish_connect(proc)
            token = token_of(daemon)
            api = httpx.Client(base_url=cloud.base_url, headers={"Authorization": f"Bearer {token}"})

            def call(canary: str) -> None:
                run_program(daemon, upstream.base_url, canary)

            def synced_rows() -> int:
                today = time.strftime("%Y-%m-%d", time.gmtime())
                days = api.get("/v1/requests/totals", params={"from_date": today, "to_date": today}).json()["days"]
                return sum(d["rows"] for d in days)

            # "sync" on the machine, the workspace off: rows sync, no body is uploaded.
            first = f"CANARY-{uuid.uuid4().hex}"
            call(first)
            wait_for(lambda: synced_rows() == 2, what="the rows to sync")
            assert api.get("/v1/whoami").json()["accept_bodies"] is False
            time.sleep(1.0)  # five body-sync rounds
            assert cloud_bodies() == 0
            status = json.loads(daemon.cli("cloud", "status", "--json").stdout)
            assert status["bodies"] == {"mode": "sync", "workspace_accepts": False}
            assert "Request bodies: sync (the workspace does not accept them)" in daemon.cli("cloud", "status").stdout

            # An admin accepts bodies: the waiting ones go up, after their rows.
            csrf = cloud.csrf(owner, "/acme/settings/retention")
            turned = owner.post("/acme/settings/retention", data={"csrf_token": csrf, "action": "accept_bodies"},
                                follow_redirects=True)
            assert turned.status_code == 200 and "Accept request bodies: <strong>on" in turned.text
            second = f"CANARY-{uuid.uuid4().hex}"
            call(second)
            wait_for(lambda: synced_rows() == 4, what="the new rows to sync")
            wait_for(lambda: cloud_bodies() == 4, what="the bodies to upload")
            api.close()

        raw = Path(cloud.db_url.removeprefix("sqlite:///")).read_bytes()
        for secret in (first, second, PROMPT_KEY, "CANARYKEY", "HEADERKEY"):
            assert secret.encode() not in raw, f"{secret} in the cloud database in plain text"

        listing = owner.get("/acme/requests")
        ids = re.findall(r'/acme/requests/([0-9a-f-]{36})', listing.text)
        assert len(ids) == 4
        member = cloud.login_session("member@example.com", PASSWORD)
        assert member.get(f"/acme/requests/{ids[0]}").status_code == 403
        assert member.get("/acme/requests").status_code == 403

        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{cloud.app_url}/login")
            page.get_by_label("Email").fill("owner@example.com")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.goto(f"{cloud.app_url}/acme/requests")
            seen = ""
            for rid in ids:
                page.goto(f"{cloud.app_url}/acme/requests/{rid}")
                seen += page.get_by_label("Request body").inner_text()
            assert first in seen and second in seen and "[REDACTED]" in seen and "CANARYKEY" not in seen
        finally:
            context.close()
        with engine.connect() as conn:
            views = conn.execute(select(func.count()).select_from(audit_log)
                                 .where(audit_log.c.action == "body.view")).scalar()
        assert views == 4
        engine.dispose()



def _owner_accepting_bodies(cloud: CloudServer) -> httpx.Client:
    """The signed-in owner of workspace acme, which they set to accept request bodies."""
    cloud.create_user("owner@example.com", PASSWORD, "acme")
    owner = cloud.login_session("owner@example.com", PASSWORD)
    csrf = cloud.csrf(owner, "/acme/settings/retention")
    owner.post("/acme/settings/retention", data={"csrf_token": csrf, "action": "accept_bodies"})
    return owner

def test_disconnect_never_uploads_pending_bodies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALTON_METER_CLOUD_MASTER_KEY", Fernet.generate_key().decode())
    ca = make_ca(tmp_path / "ca")
    with FakeProviders(ca) as upstream, running_cloud(tmp_path / "cloud") as cloud:
        owner = _owner_accepting_bodies(cloud)
        engine = make_engine(cloud.db_url)
        extra = capture_host_config([f"localhost:{upstream.port}"]) + '[capture]\nbodies = "sync"\n'
        # One body-sync round at start, then none for a minute: the bodies below wait.
        with running_daemon(tmp_path / "home", upstream_ca=ca.ca_path, extra_config=extra,
                            env={"HALTON_METER_BODY_SYNC_SECONDS": "60"}) as daemon:
            proc, code, _url = start_connect(daemon, cloud)
            assert cloud.approve(code, "acme", owner).status_code == 200
            finish_connect(proc)
            run_program(daemon, upstream.base_url, "CANARY-pending")
            db = tmp_path / "home" / "db.sqlite"

            def waiting() -> bool:
                import sqlite3

                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    return conn.execute("SELECT count(*) FROM request_bodies b JOIN requests r ON r.id = b.id"
                                        " WHERE b.synced_at IS NULL AND r.synced_at IS NOT NULL").fetchone()[0] == 2

            wait_for(waiting, what="two bodies waiting after their synced rows")
            assert daemon.cli("cloud", "disconnect").returncode == 0
            time.sleep(1.0)
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(request_bodies)).scalar() == 0
        engine.dispose()


@pytest.mark.parametrize("mode", ["off", "local"])
def test_off_and_local_never_upload_even_to_a_workspace_that_accepts(tmp_path: Path, mode: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALTON_METER_CLOUD_MASTER_KEY", Fernet.generate_key().decode())
    canary = f"CANARY-{uuid.uuid4().hex}"
    ca = make_ca(tmp_path / "ca")
    with FakeProviders(ca) as upstream, running_cloud(tmp_path / "cloud") as cloud:
        owner = _owner_accepting_bodies(cloud)
        extra = capture_host_config([f"localhost:{upstream.port}"]) + f'[capture]\nbodies = "{mode}"\n'
        with running_daemon(tmp_path / "home", upstream_ca=ca.ca_path, extra_config=extra,
                            env={"HALTON_METER_BODY_SYNC_SECONDS": "0.2"}) as daemon:
            proc, code, _url = start_connect(daemon, cloud)
            assert cloud.approve(code, "acme", owner).status_code == 200
            finish_connect(proc)
            api = httpx.Client(base_url=cloud.base_url, headers={"Authorization": f"Bearer {token_of(daemon)}"})
            run_program(daemon, upstream.base_url, canary)
            today = time.strftime("%Y-%m-%d", time.gmtime())
            wait_for(lambda: sum(d["rows"] for d in api.get("/v1/requests/totals", params={
                "from_date": today, "to_date": today}).json()["days"]) == 2, what="the rows to sync")
            time.sleep(1.0)  # five body-sync rounds, were the component running
            assert json.loads(daemon.cli("cloud", "status", "--json").stdout)["bodies"]["mode"] == mode
            api.close()
        engine = make_engine(cloud.db_url)
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(request_bodies)).scalar() == 0
        engine.dispose()
        raw = Path(cloud.db_url.removeprefix("sqlite:///")).read_bytes()
        for suffix in ("-wal",):
            wal = Path(cloud.db_url.removeprefix("sqlite:///") + suffix)
            raw += wal.read_bytes() if wal.exists() else b""
        assert canary.encode() not in raw and b"CANARYKEY" not in raw and b"HEADERKEY" not in raw
