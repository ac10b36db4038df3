"""Stored XSS, checked in a real Chromium: every string a hostile member or device controls
(workspace name, hostname, model, project, repo, branch, program, OS user, tags, budget scope,
invitation address, request body) is put on every page that shows it, and no script runs.

The payloads set ``window.__xss``; a page passes when, after loading, it is still unset and
no dialog opened. Jinja escapes by default, so this guards against a ``|safe``, a ``Markup``
or an SVG built by hand letting one through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from cryptography.fernet import Fernet
from playwright.sync_api import Browser, Page

from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row
from tests.support.receiver import serving_page

pytestmark = pytest.mark.slow
PASSWORD = "xss-pass-12345"
IMG = '<img src=x onerror="window.__xss=(window.__xss||0)+1">'
ATTR = "\"'><svg onload=\"window.__xss=(window.__xss||0)+1\">"
SCRIPT = "</title></textarea><script>window.__xss=(window.__xss||0)+1</script>"
HREF = "javascript:window.__xss=1//"
# An element the payloads made: an on* attribute or a script that mentions __xss.
INJECTED = """() => [...document.querySelectorAll('*')].some(e => [...e.attributes].some(
    a => a.name.startsWith('on') && a.value.includes('__xss'))) || [...document.scripts].some(
    s => s.text.includes('__xss'))"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CloudServer, str, dict[str, str]]]:
    """A workspace full of hostile strings: (server, its slug, ids to visit)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HALTON_METER_CLOUD_MASTER_KEY", Fernet.generate_key().decode())
    try:
        with running_cloud(tmp_path_factory.mktemp("cloud-xss")) as cloud:
            yield cloud, *_fill(cloud)
    finally:
        mp.undo()


def _fill(cloud: CloudServer) -> tuple[str, dict[str, str]]:
    visitor = cloud.client()
    signup = visitor.post("/signup", data={"csrf_token": cloud.csrf(visitor, "/signup"), "email": "owner@example.com",
                                           "password": PASSWORD, "workspace": f"acme {IMG}"})
    assert signup.status_code == 303, signup.text
    slug = signup.headers["location"].strip("/")
    owner = cloud.login_session("owner@example.com", PASSWORD)

    def post(path: str, **data: str) -> httpx.Response:
        return owner.post(f"/{slug}{path}", data={"csrf_token": cloud.csrf(owner, f"/{slug}/settings/devices"), **data})

    assert post("/settings/retention", action="accept_bodies").status_code == 303
    assert post("/settings/budgets", name="b1", scope_kind="project", scope_value=IMG, period="month",
                limit_usd="1", thresholds="50").status_code in (200, 303)
    assert post("/settings/members", action="invite", role="viewer",
                email="<img/src=x/onerror=window.__xss=1>@x.io").status_code == 200
    assert post("/settings/api-keys", action="create", name="grafana").status_code == 200
    paired = cloud.pair("owner@example.com", PASSWORD, slug, hostname=f"box {ATTR}")
    device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
    rows = [sample_row(model=payload, project=payload, repo=payload, branch=payload, program=payload,
                       os_user=payload, tags={"team": payload}, ts="2026-11-20T10:00:00.000Z")
            for payload in (IMG, ATTR, SCRIPT, HREF)]
    assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
    body = {"id": rows[0]["id"], "request": f"{IMG}{SCRIPT}", "response": ATTR, "truncated": False}
    assert device.post("/v1/requests/bodies", json={"bodies": [body]}).json()["stored"] == 1
    pending = cloud.start_pairing(hostname=f"pending {IMG}", workspace=slug, os_name=f"os {ATTR}")
    return slug, {"row": str(rows[0]["id"]), "code": str(pending["user_code"])}


def _sign_in(page: Page, cloud: CloudServer) -> None:
    page.goto(f"{cloud.app_url}/login")
    page.get_by_label("Email").fill("owner@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("Sign in", re.I)).click()
    page.wait_for_load_state("load")


def _pages(slug: str, ids: dict[str, str]) -> list[str]:
    days = "from_date=2026-11-01&to_date=2026-11-29"
    base = f"/{slug}/?{days}"
    return [
        base, f"{base}&group=member", f"{base}&group=repo", f"{base}&group=branch", f"{base}&group=program",
        f"{base}&group=tag&tag_key=team", f"{base}&chart=machine", f"{base}&chart=person", f"{base}&chart=member",
        f"{base}&model={IMG}", f"{base}&project={ATTR}", f"{base}&tag=team={IMG}", f"{base}&sort=name",
        f"/{slug}/settings/devices", f"/{slug}/settings/members", f"/{slug}/settings/audit",
        f"/{slug}/settings/budgets", f"/{slug}/settings/retention", f"/{slug}/settings/api-keys",
        f"/{slug}/requests", f"/{slug}/requests/{ids['row']}", f"/connect?code={ids['code']}", "/workspaces/new",
    ]


def test_no_hostile_string_runs_a_script_on_any_page(browser: Browser,
                                                    hostile: tuple[CloudServer, str, dict[str, str]]) -> None:
    cloud, slug, ids = hostile
    context = browser.new_context()
    try:
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        _sign_in(page, cloud)
        page.wait_for_url(re.compile(rf"/{re.escape(slug)}/"))
        shown = 0
        for path in _pages(slug, ids):
            answer = page.goto(cloud.app_url + path)
            assert answer is not None and answer.status == 200, (path, answer and answer.status)
            page.wait_for_load_state("load")
            assert page.evaluate("window.__xss") is None, path
            assert not page.evaluate(INJECTED), path
            shown += page.evaluate("document.title + document.body.innerText").count("window.__xss")  # as text
        assert dialogs == []
        assert shown > 50, "the hostile strings never reached the pages: the test checks nothing"
        assert not [a for a in page.locator("a[href^='javascript:']").all()]
    finally:
        context.close()


def test_the_hostile_workspace_has_what_the_pages_show(hostile: tuple[CloudServer, str, dict[str, str]]) -> None:
    # The fixture's uploads were accepted (a refused batch would make the browser test vacuous).
    cloud, slug, ids = hostile
    owner = cloud.login_session("owner@example.com", PASSWORD)
    page = owner.get(f"/{slug}/requests/{ids['row']}")
    assert page.status_code == 200 and "&lt;img src=x onerror=" in page.text
    assert "&lt;script&gt;window.__xss" in page.text


def test_chromium_refuses_to_frame_the_approve_page(browser: Browser,
                                                    hostile: tuple[CloudServer, str, dict[str, str]]) -> None:
    # Clickjacking: a page on another port of the same host is same-site, so SameSite=Lax
    # sends the session cookie into its iframe of /connect?code=…: the signed-in victim's
    # Approve button under a decoy. With frame-ancestors 'none' Chromium shows no page there.
    cloud, _slug, ids = hostile
    framing = f'<iframe src="{cloud.app_url}/connect?code={ids["code"]}" width="600" height="400"></iframe>'.encode()
    context = browser.new_context()
    try:
        page = context.new_page()
        _sign_in(page, cloud)
        with serving_page(framing) as port:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_timeout(1500)
            [framed] = [f for f in page.frames if f is not page.main_frame]
            shown = "" if framed.url.startswith("chrome-error://") else framed.content()
        assert "Approve" not in shown, framed.url
    finally:
        context.close()
