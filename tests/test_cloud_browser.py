"""The pages in a real Chromium (Playwright): sign up, approve, see, revoke.

One server and one browser for the module. Screenshots of the dashboard and
devices pages at phone width go to the test's tmp dir (and to
``$HM_CLOUD_SCREENSHOTS`` when set, for a person to look at).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row
from tests.support.receiver import serving_page

PHONE = {"width": 390, "height": 844}
PASSWORD = "browser-pass-1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud-browser")) as server:
        yield server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=PHONE)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    wanted = os.environ.get("HM_CLOUD_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(wanted) / path.name)
    return path


def sign_up(page: Page, cloud: CloudServer, email: str, workspace: str) -> None:
    page.goto(f"{cloud.app_url}/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Workspace name").fill(workspace)
    page.get_by_role("button", name="Sign up").click()


def test_sign_up_approve_see_and_revoke_a_device(
    cloud: CloudServer, page: Page, tmp_path: Path
) -> None:
    sign_up(page, cloud, "rocket@example.com", "Team Rocket")
    expect(page).to_have_url(f"{cloud.app_url}/team-rocket/")
    expect(page.get_by_role("heading", name=re.compile("Spend"))).to_be_visible()

    # The daemon's side: start pairing and long-poll while the person approves.
    started = cloud.start_pairing(
        workspace="team-rocket", hostname="rocket-laptop", os_name="macOS 15.1"
    )
    polled: dict[str, Any] = {}
    poller = threading.Thread(
        target=lambda: polled.update(cloud.poll(started["device_code"], wait=20))
    )
    poller.start()

    page.goto(started["verification_uri_complete"])
    expect(page.get_by_role("heading", name="Approve this machine?")).to_be_visible()
    for shown in (
        started["user_code"],
        "rocket-laptop",
        started["machine_id"],
        "macOS 15.1",
        "0.2.1",
    ):
        expect(page.locator("dl.facts")).to_contain_text(shown)
    expect(page.get_by_label("Workspace")).to_have_value("team-rocket")
    screenshot(page, tmp_path, "connect-phone")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", name="Machine approved")).to_be_visible()
    poller.join(10)
    assert polled["status_code"] == 200 and polled["workspace_slug"] == "team-rocket"
    token = polled["token"]

    # The machine uploads: priced and unpriced calls on two days.
    api = httpx.Client(base_url=cloud.base_url, headers={"Authorization": f"Bearer {token}"})
    rows = [
        sample_row(ts="2026-11-23T09:00:00Z", cost_usd="0.42", model="gpt-4o"),
        sample_row(
            ts="2026-11-24T09:00:00Z",
            cost_usd="1.10",
            model="claude-sonnet-4",
            provider="anthropic",
        ),
        sample_row(
            ts="2026-11-24T10:00:00Z", cost_usd=None, model="mystery-model", provider="anthropic"
        ),
    ]
    assert api.post("/v1/requests/batch", json=batch_body(rows)).json() == {
        "accepted": 3,
        "duplicates": 0,
    }

    page.goto(f"{cloud.app_url}/team-rocket/?from_date=2026-11-10&to_date=2026-11-25")
    expect(page.locator(".totals")).to_contain_text("$1.52")
    machines = page.get_by_role("table", name="Spend by machine")
    expect(machines).to_contain_text("rocket-laptop")
    models = page.get_by_role("table", name="Spend by model")
    expect(models.get_by_role("row", name=re.compile("mystery-model"))).to_contain_text(
        "unknown price"
    )
    expect(page.locator(".hm-chart:visible svg g.bar")).to_have_count(16)
    expect(page.locator(".hm-chart:visible svg g.bar rect")).to_have_count(2)  # two priced days, one model each
    screenshot(page, tmp_path, "dashboard-phone")

    page.get_by_role("link", name="Devices").click()
    expect(page).to_have_url(f"{cloud.app_url}/team-rocket/settings/devices")
    device_row = page.get_by_role("row", name=re.compile("rocket-laptop"))
    expect(device_row).to_contain_text(started["machine_id"])
    expect(device_row).to_contain_text("Active")
    expect(device_row).to_contain_text(re.compile(r"\ds ago"))
    expect(device_row.get_by_role("cell").nth(4)).to_have_text("3")  # after Owner, Machine id, Paired at, Last sync
    expect(device_row).to_contain_text("rocket@example.com")  # its owner: who approved it
    screenshot(page, tmp_path, "devices-phone")

    device_row.get_by_role("link", name="Revoke rocket-laptop").click()
    expect(page.get_by_role("heading", name="Revoke rocket-laptop?")).to_be_visible()
    assert api.get("/v1/whoami").status_code == 200  # nothing happens before confirming
    page.get_by_role("button", name="Revoke rocket-laptop").click()
    expect(page).to_have_url(re.compile(rf"{re.escape(cloud.app_url)}/team-rocket/settings/devices\?revoked="))
    expect(page.get_by_role("row", name=re.compile("rocket-laptop"))).to_contain_text("Revoked")
    expect(page.get_by_role("status")).to_contain_text("Revoked rocket-laptop: its token no longer works")

    after = api.get("/v1/whoami")
    assert after.status_code == 401
    assert after.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert api.post("/v1/requests/batch", json=batch_body([sample_row()])).status_code == 401
    api.close()


def test_connect_signs_in_first_and_explains_unknown_codes(cloud: CloudServer, page: Page) -> None:
    cloud.create_user("team@example.com", PASSWORD, "team")
    started = cloud.start_pairing(hostname="signed-out-box")
    page.goto(started["verification_uri_complete"])
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Email").fill("team@example.com")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    # Back on the code that was being approved.
    expect(page.get_by_role("heading", name="Approve this machine?")).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("signed-out-box")
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_role("heading", name="Request denied")).to_be_visible()
    assert cloud.poll(started["device_code"], wait=0)["error"] == "access_denied"

    page.goto(f"{cloud.app_url}/connect?code=ABCD-EFGH")
    expect(page.get_by_role("alert")).to_have_text(
        "Code not found — it may have expired (codes last 10 minutes). "
        "Run `halton-meter cloud connect` again for a fresh code."
    )


def test_signup_errors_are_shown_on_the_form(cloud: CloudServer, page: Page) -> None:
    sign_up(page, cloud, f"x{uuid.uuid4().hex[:6]}@example.com", "login")
    expect(page.get_by_role("alert")).to_contain_text("Choose a workspace name")
    sign_up(page, cloud, "team@example.com", "another")
    # One answer for a known email and a taken workspace name (no enumeration).
    expect(page.get_by_role("alert")).to_contain_text("if you already have an account, sign in instead")


@pytest.mark.parametrize("width", [390, 1280])
def test_dashboard_shows_errors_and_missing_usage_apart(
    cloud: CloudServer, browser: Browser, tmp_path: Path, width: int
) -> None:
    slug = f"apart-{width}"
    email = f"{slug}@example.com"
    cloud.create_user(email, PASSWORD, slug)
    token = cloud.pair(email, PASSWORD, slug, hostname=f"{slug}-box")["token"]
    api = httpx.Client(base_url=cloud.base_url, headers={"Authorization": f"Bearer {token}"})
    rows = [
        sample_row(ts="2026-11-23T09:00:00Z", cost_usd="0.42", model="gpt-4o"),
        sample_row(ts="2026-11-24T09:00:00Z", cost_usd="1.10", model="claude-sonnet-4", provider="anthropic"),
        sample_row(ts="2026-11-24T10:00:00Z", cost_usd=None, model="mystery-model"),
        sample_row(ts="2026-11-24T11:00:00Z", cost_usd=None, input_tokens=None, output_tokens=None),
        sample_row(ts="2026-11-25T11:00:00Z", cost_usd=None, status=401, input_tokens=None, output_tokens=None),
    ]
    assert api.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
    api.close()
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{cloud.app_url}/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{cloud.app_url}/{slug}/?from_date=2026-11-20&to_date=2026-11-26")
        totals = page.locator(".totals")
        expect(totals).to_contain_text("Unknown price1 call")
        expect(totals).to_contain_text("No usage reported1 call")
        expect(totals).to_contain_text("Errors1 call")
        expect(totals).to_contain_text("$1.52")
        models = page.get_by_role("table", name="Spend by model")
        expect(models.get_by_role("row", name=re.compile("gpt-4o-mini"))).to_contain_text(
            "$0.00 + 1 without usage"
        )
        expect(page.locator(".hm-chart:visible svg g.bar")).to_have_count(7)
        expect(page.locator(".hm-legend:visible li")).to_have_count(2)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        screenshot(page, tmp_path, f"dashboard-apart-{width}")
    finally:
        context.close()


def test_a_cross_site_form_post_to_login_does_not_sign_the_victim_out(
    cloud: CloudServer, page: Page
) -> None:
    """Issue 10, item 10, as a browser does it: another site's auto-submitting form."""

    sign_up(page, cloud, f"victim-{uuid.uuid4().hex[:6]}@example.com", "Victim Co")
    expect(page).to_have_url(re.compile(r"/victim-co(-\w+)?/$"))
    dashboard = page.url
    attack = (
        f'<form id="f" method="post" action="{cloud.app_url}/login">'
        '<input name="email" value="attacker@example.com"><input name="password" value="x">'
        "</form><script>document.getElementById('f').submit()</script>"
    ).encode()

    with serving_page(attack) as port:
        # "localhost" is another site than the app's 127.0.0.1: the post is cross-site,
        # so the browser leaves the victim's SameSite=Lax cookie out of it.
        page.goto(f"http://localhost:{port}/")
        page.wait_for_url(f"{cloud.app_url}/login")
        expect(page.get_by_role("heading", name="Form expired")).to_be_visible()
    page.goto(dashboard)
    expect(page).to_have_url(dashboard)  # still signed in: no redirect to /login
