"""Workspace budgets in the cloud: set on the page by an owner, crossed by real batches,
alerted once per threshold to a local webhook receiver and an aiosmtpd sink."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row
from tests.support.postgres import running_postgres
from tests.support.receiver import Receiver
from tests.support.smtpsink import Sink, smtp_sink

pytestmark = pytest.mark.slow
PASSWORD = "correct-horse-1"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    with smtp_sink(monkeypatch) as sink:
        yield sink


def wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def add_budget(cloud: CloudServer, session: Any, **fields: str) -> Any:
    csrf = cloud.csrf(session, "/acme/settings/budgets")
    return session.post("/acme/settings/budgets", data={"csrf_token": csrf, **fields}, follow_redirects=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with running_postgres() as server:
        yield server.create_database("hm_cloud_budgets")


def test_budget_alerts_once_per_threshold_by_webhook_and_email(tmp_path: Path, smtp: Sink, db_url: str | None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The receiver is on loopback, which a backend refuses unless told (see the test below).
    monkeypatch.setenv("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE", "1")
    with Receiver() as hooks, running_cloud(tmp_path, db_url=db_url) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        owner = cloud.login_session("owner@example.com", PASSWORD)
        answer = add_budget(cloud, owner, name="team-monthly", scope_kind="workspace", period="month",
                            limit_usd="1.00", thresholds="50, 80, 100", webhook_url=hooks.url("/slack"))
        assert answer.status_code == 200 and "team-monthly" in answer.text, answer.text
        add_budget(cloud, owner, name="acme-project", scope_kind="project", scope_value="acme", period="day",
                   limit_usd="10", thresholds="100")
        bad = add_budget(cloud, owner, name="x", scope_kind="workspace", limit_usd="zero")
        assert bad.status_code == 400 and "Limit: an amount of US dollars" in bad.text

        paired = cloud.pair("owner@example.com", PASSWORD, "acme", machine_id=str(uuid.uuid4()))
        device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

        def send(cost: str, n: int = 1) -> None:
            rows = [sample_row(ts=now, cost_usd=cost) for _ in range(n)]
            assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200

        send("0.30")  # 30%: nothing
        send("0.25")  # 55%: 50 fires
        assert len(hooks.wait_for(1)) == 1
        send("0.10", 2)  # 75%: nothing more
        send("0.10")  # 85%: 80 fires
        assert len(hooks.wait_for(2)) == 2
        send("0.50", 3)  # 235%: 100 fires, once (285% after the next)
        assert len(hooks.wait_for(3)) == 3
        send("0.50")
        time.sleep(1.0)
        assert [p.json()["threshold"] for p in hooks.posts] == [50, 80, 100]
        last = hooks.posts[-1].json()
        assert last["budget"] == "team-monthly" and last["workspace"] == "acme"
        assert last["text"].startswith("Halton Meter budget team-monthly (acme) reached")
        assert last["period"] == datetime.now(UTC).strftime("%Y-%m") and last["spend_usd"] == "2.35"

        assert wait_for(lambda: len(smtp.messages) == 3)
        rcpt, raw = smtp.messages[0]
        mail = message_from_bytes(raw)
        assert rcpt == ["owner@example.com"] and mail["From"] == "alerts@example.com"
        assert mail["Subject"] == "[Halton Meter] budget team-monthly 50%"
        assert "/acme/settings/budgets" in mail.get_payload()

        page = owner.get("/acme/settings/budgets").text
        assert "$2.85" in page and "285.0%" in page and "project acme" in page
        dashboard = owner.get("/acme/").text  # the chart's budget line, per day
        assert '<g class="budget">' in dashboard and "Budget team-monthly: $1.00 a month" in dashboard

        # The project budget counts only its project's rows.
        rows = [sample_row(ts=now, cost_usd="6", project="acme") for _ in range(2)]
        assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
        assert wait_for(lambda: len(smtp.messages) == 4)
        assert "budget acme-project 100%" in message_from_bytes(smtp.messages[3][1])["Subject"]
        assert len(hooks.posts) == 3  # the project budget has no webhook

    # A restart: nothing is sent again.
    with running_cloud(tmp_path, db_url=db_url) as cloud:
        paired = cloud.pair("owner@example.com", PASSWORD, "acme", machine_id=str(uuid.uuid4()))
        device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
        rows = [sample_row(ts=now, cost_usd="1")]
        assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
        time.sleep(1.0)
        assert len(smtp.messages) == 4


def test_only_owners_change_budgets(tmp_path: Path) -> None:
    with running_cloud(tmp_path) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        cloud.create_user("member@example.com", PASSWORD, "acme")
        member = cloud.login_session("member@example.com", PASSWORD)
        page = member.get("/acme/settings/budgets")
        assert page.status_code == 200 and "Add a budget" not in page.text
        refused = add_budget(cloud, member, name="mine", scope_kind="workspace", limit_usd="5")
        assert refused.status_code == 403 and "Only the workspace" in refused.text
        no_csrf = member.post("/acme/settings/budgets", data={"name": "x", "limit_usd": "5"})
        assert no_csrf.status_code in (400, 403)
        owner = cloud.login_session("owner@example.com", PASSWORD)
        assert "Add a budget" in owner.get("/acme/settings/budgets").text


def test_webhooks_to_private_addresses_are_refused(tmp_path: Path, smtp: Sink) -> None:
    with Receiver() as hooks, running_cloud(tmp_path) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        owner = cloud.login_session("owner@example.com", PASSWORD)
        add_budget(cloud, owner, name="tiny", scope_kind="workspace", period="day", limit_usd="0.01",
                   thresholds="100", webhook_url=hooks.url("/internal"))
        paired = cloud.pair("owner@example.com", PASSWORD, "acme", machine_id=str(uuid.uuid4()))
        device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        assert device.post("/v1/requests/batch", json=batch_body([sample_row(ts=now, cost_usd="0.05")])).status_code == 200
        assert wait_for(lambda: len(smtp.messages) == 1)  # delivery ran: the e-mail went
        assert wait_for(lambda: "not called: it resolves to a non-public address" in cloud.log())
        assert hooks.posts == []
