"""The team cloud in a real Chromium: an invitation opened in a second browser
context (invite, sign up, see the workspace, switch; on SQLite and on PostgreSQL),
and the dashboard at 390
and 1280 px (no page overflow, dollar ticks on the y axis, the chart toggle as
links). Screenshots go to the test's tmp dir and to ``$HM_CLOUD_SCREENSHOTS``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row
from tests.support.postgres import PostgresServer
from tests.test_cloud_browser import screenshot

pytestmark = pytest.mark.slow
PASSWORD = "browser-team-1"
WIDTHS = (390, 1280)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud-team-browser")) as server:
        server.create_user("lead@example.com", PASSWORD, "acme")
        yield server


@pytest.fixture(scope="module")
def pg_cloud(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud-team-browser-pg"),
                       db_url=postgres.create_database("hm_team_browser")) as server:
        server.create_user("lead@example.com", PASSWORD, "acme")
        yield server


def sign_in(page: Page, cloud: CloudServer, email: str) -> None:
    page.goto(f"{cloud.app_url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def no_page_overflow(page: Page) -> None:
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert scroll <= inner, f"the page is {scroll} px wide in a {inner} px window"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_invited_person_signs_up_sees_the_workspace_and_switches(
    backend: str, request: pytest.FixtureRequest, browser: Browser, tmp_path: Path
) -> None:
    cloud: CloudServer = request.getfixturevalue("cloud" if backend == "sqlite" else "pg_cloud")
    lead_ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    guest_ctx = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        lead = lead_ctx.new_page()
        sign_in(lead, cloud, "lead@example.com")
        lead.get_by_role("link", name="Members").click()
        lead.get_by_label("Their role").select_option("member")
        lead.get_by_role("button", name="Make an invitation link").click()
        link = lead.get_by_label("Invitation link").input_value()
        assert re.fullmatch(rf"{re.escape(cloud.app_url)}/invite/[A-Za-z0-9_-]{{43}}", link)
        expect(lead.get_by_role("table", name="Invitations not used yet")).to_contain_text("member")
        screenshot(lead, tmp_path, "members-1280")

        guest = guest_ctx.new_page()
        guest.goto(link)
        expect(guest.get_by_role("heading", level=1)).to_contain_text("Join")
        guest.get_by_label("Email").fill("guest@example.com")
        guest.get_by_label("Password (at least 8 characters)").fill(PASSWORD)
        screenshot(guest, tmp_path, "invite-390")
        guest.get_by_role("button", name="Sign up and join").click()
        expect(guest).to_have_url(f"{cloud.app_url}/acme/")
        expect(guest.get_by_role("heading", level=1)).to_contain_text("acme")
        no_page_overflow(guest)
        # a member works in it: pairs a machine, sees it as theirs; no admin pages
        expect(guest.get_by_role("link", name="Audit log")).to_have_count(0)
        started = cloud.start_pairing(workspace="acme", hostname="guest-laptop")
        guest.goto(started["verification_uri_complete"])
        guest.get_by_role("button", name="Approve").click()
        expect(guest.get_by_role("heading", name="Machine approved")).to_be_visible()
        assert cloud.poll(started["device_code"])["status_code"] == 200
        guest.goto(f"{cloud.app_url}/acme/settings/devices")
        mine = guest.get_by_role("row", name=re.compile("guest-laptop"))
        expect(mine).to_contain_text("guest@example.com")
        expect(mine.get_by_role("link", name="Revoke guest-laptop")).to_be_visible()
        assert guest.goto(f"{cloud.app_url}/acme/settings/audit").status == 403

        # the guest makes a workspace of their own and switches back with the header's switcher
        guest.locator("details.switch summary").click()
        guest.get_by_role("link", name="+ New workspace").click()
        guest.get_by_label("Name").fill("Guest Lab")
        guest.get_by_role("button", name="Create workspace").click()
        expect(guest).to_have_url(f"{cloud.app_url}/guest-lab/")
        guest.locator("details.switch summary").click()
        guest.locator("details.switch").get_by_role("link", name="acme").click()
        expect(guest).to_have_url(f"{cloud.app_url}/acme/")
        guest.goto(f"{cloud.app_url}/")
        expect(guest).to_have_url(f"{cloud.app_url}/acme/")  # `/` opens the last used
        screenshot(guest, tmp_path, "guest-dashboard-390")

        # the lead sees them as a member; the link is used up
        lead.reload()
        expect(lead.get_by_role("table", name="People in this workspace")).to_contain_text("guest@example.com")
        again = guest_ctx.new_page()
        again.goto(link)
        expect(again.get_by_role("heading", level=1)).to_contain_text("Invitation not valid")
    finally:
        lead_ctx.close()
        guest_ctx.close()


@pytest.fixture(scope="module")
def spend(cloud: CloudServer) -> str:
    """Two machines, three models, a week: the dashboard of workspace 'spend'."""
    cloud.create_user("spend@example.com", PASSWORD, "spend")
    for host, models in (("ana-laptop", ("gpt-4o", "claude-sonnet-4")), ("build-server", ("gpt-4o-mini",))):
        token = cloud.pair("spend@example.com", PASSWORD, "spend", machine_id=str(uuid.uuid4()), hostname=host)["token"]
        rows = [
            sample_row(ts=f"2026-11-{day:02d}T10:00:00Z", model=model, cost_usd=f"{0.35 * (n + 1) + day / 10:.2f}",
                       provider="anthropic" if model.startswith("claude") else "openai",
                       input_tokens=2000, cache_read_tokens=1500 if model == "gpt-4o" else None)
            for day in range(18, 25) for n, model in enumerate(models)
        ]
        with httpx.Client(base_url=cloud.base_url, headers={"Authorization": f"Bearer {token}"}) as api:
            assert api.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
    return "spend"


@pytest.mark.parametrize("width", WIDTHS)
def test_the_dashboard_fits_has_dollar_ticks_and_a_toggle_at(
    cloud: CloudServer, browser: Browser, spend: str, tmp_path: Path, width: int
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        sign_in(page, cloud, "spend@example.com")
        page.goto(f"{cloud.app_url}/spend/?from_date=2026-11-18&to_date=2026-11-24")
        chart = page.locator(".hm-chart:visible")
        expect(chart).to_have_count(1)
        ticks = chart.locator("svg > text").all_text_contents()
        assert [t for t in ticks if t.startswith("$")], ticks
        label_px = chart.locator("svg > text").first.evaluate("e => e.getBoundingClientRect().height")
        heading_px = page.locator("h2").first.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
        assert 8 <= label_px <= heading_px, (label_px, heading_px)  # readable, never larger than a heading
        expect(chart.locator("svg g.bar")).to_have_count(7)
        no_page_overflow(page)
        screenshot(page, tmp_path, f"dashboard-model-{width}")
        page.get_by_role("navigation", name="Split the chart by").get_by_role("link", name="Machine").click()
        expect(page).to_have_url(re.compile(r"chart=machine"))
        expect(page.locator(".hm-legend:visible")).to_contain_text("build-server")
        no_page_overflow(page)
        screenshot(page, tmp_path, f"dashboard-machine-{width}")
    finally:
        context.close()
