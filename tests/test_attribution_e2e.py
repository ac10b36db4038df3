"""End to end: unmodified clients (the official openai SDK configured only by
environment, and curl) started in two git repositories, one a worktree and one
with a detached HEAD, through a real daemon; the rows say which project,
repository, branch, program and user spent them.

One daemon, one fake upstream and the repositories serve the whole module.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .support.daemon import Daemon, capture_host_config, running_daemon
from .support.fake_providers import FakeProviders
from .support.tls import make_ca

pytestmark = pytest.mark.slow

OPENAI_KEY = "sk-proj-attributionSECRET0123456789"
OTHER_USER = "hm-attr-other"
ME = pwd.getpwuid(os.getuid()).pw_name
PYTHON = os.path.basename(os.path.realpath(sys.executable))  # what /proc/<pid>/exe names

SDK_CLIENT = """\
import os, openai
c = openai.OpenAI(api_key=os.environ["KEY"], base_url=os.environ["BASE"], max_retries=0)
c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
"""


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def new_repo(path: Path, branch: str = "main") -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", branch)
    (path / "README").write_text("x\n")
    git(path, "add", "README")
    git(path, "commit", "-q", "-m", "first")
    return path


@dataclass
class Rig:
    daemon: Daemon
    upstream: FakeProviders
    base: Path
    worktree: Path  # of repo "widgets" (origin acme/widgets.git), branch feature/login
    detached: Path  # repo folder "gadgets", no origin, detached HEAD
    detached_sha: str
    outside: Path  # in no repository
    ruled: Path  # a repository under a [[attribution.rules]] path
    script: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = self.daemon.env_for_clients()
        for var in ("HALTON_METER_PROJECT", "HALTON_METER_TAGS"):
            env.pop(var, None)
        env.update(KEY=OPENAI_KEY, BASE=f"{self.upstream.base_url}/v1", **extra)
        return env

    def sdk(self, cwd: Path, **env: str) -> dict[str, Any]:
        before = self.ids()
        done = subprocess.run([sys.executable, str(self.script)], cwd=cwd, env=self.env(**env),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return self.next_row(before)

    def curl(self, cwd: Path, *args: str, user: str | None = None, ca: Path | None = None,
             **env: str) -> dict[str, Any]:
        before = self.ids()
        done = subprocess.run(
            ["curl", "-sS", "--fail-with-body", "--max-time", "30", "--proxy", self.daemon.proxy_url,
             "--cacert", str(ca or self.daemon.ca_cert_path), "-H", f"Authorization: Bearer {OPENAI_KEY}",
             "-H", "Content-Type: application/json", "-d", '{"model":"gpt-4o","messages":[]}', *args,
             f"{self.upstream.base_url}/v1/chat/completions"],
            cwd=cwd, env=self.env(**env), capture_output=True, text=True, timeout=40, user=user,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return self.next_row(before)

    def rows(self) -> list[dict[str, Any]]:
        return self.daemon.rows()

    def next_row(self, before: set[str], timeout: float = 15) -> dict[str, Any]:
        return self.daemon.next_row(before, timeout)

    def ids(self) -> set[str]:
        return self.daemon.row_ids()


def who(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["project"], row["repo"], row["branch"]


def uploaded(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["row_json"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("attribution")
    widgets = new_repo(base / "src" / "widgets-main")
    git(widgets, "remote", "add", "origin", "git@github.com:acme/widgets.git")
    worktree = base / "src" / "widgets-login"
    git(widgets, "worktree", "add", "-q", "-b", "feature/login", str(worktree))
    gadgets = new_repo(base / "src" / "gadgets", branch="trunk")
    sha = git(gadgets, "rev-parse", "HEAD")
    git(gadgets, "checkout", "-q", "--detach")
    (gadgets / "sub" / "dir").mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    ruled = new_repo(base / "code" / "acme" / "svc-internal")
    script = base / "tools" / "sdk_client.py"
    script.parent.mkdir()
    script.write_text(SDK_CLIENT)
    ca = make_ca(base / "upstream-ca")
    rule = (
        "[[attribution.rules]]\n"
        f'path = "{base}/code/acme/**"\n'
        'project = "acme"\n'
        'tags = { team = "ml", cost_center = "42" }\n'
    )
    with FakeProviders(ca) as upstream, running_daemon(
        base / "hm-home", upstream_ca=ca.ca_path,
        extra_config=capture_host_config([f"localhost:{upstream.port}"]) + rule,
    ) as daemon:
        yield Rig(daemon, upstream, base, worktree, gadgets, sha, outside, ruled, script)


def test_sdk_and_curl_in_a_worktree_are_attributed(rig: Rig) -> None:
    sdk = rig.sdk(rig.worktree)
    curl = rig.curl(rig.worktree)
    assert who(sdk) == who(curl) == ("widgets", "widgets", "feature/login"), (sdk, curl)
    assert (sdk["program"], curl["program"]) == (f"{PYTHON} sdk_client.py", "curl")
    assert sdk["os_user"] == curl["os_user"] == ME
    assert "unattributed" not in sdk["flags"].split()
    up = uploaded(sdk)
    assert (up["project"], up["repo"], up["branch"], up["program"], up["os_user"]) == (
        "widgets", "widgets", "feature/login", f"{PYTHON} sdk_client.py", ME)
    assert str(rig.base) not in sdk["row_json"].decode()  # names, never paths


def test_sdk_and_curl_in_a_detached_head_are_attributed(rig: Rig) -> None:
    sdk = rig.sdk(rig.detached / "sub" / "dir")
    curl = rig.curl(rig.detached)
    detached = f"(detached {rig.detached_sha[:7]})"
    assert who(sdk) == who(curl) == ("gadgets", "gadgets", detached)


def test_a_client_outside_any_repository_has_no_project(rig: Rig) -> None:
    row = rig.curl(rig.outside)
    assert who(row) == (None, None, None)
    assert (row["program"], row["os_user"]) == ("curl", ME)
    assert "unattributed" not in row["flags"].split()


def test_the_callers_environment_overrides_the_repository(rig: Rig) -> None:
    row = rig.sdk(rig.worktree, HALTON_METER_PROJECT="billing", HALTON_METER_TAGS="team=payments, ticket=PAY-7")
    assert who(row) == ("billing", "widgets", "feature/login")
    assert json.loads(row["tags"]) == {"team": "payments", "ticket": "PAY-7"}
    assert uploaded(row)["tags"] == {"team": "payments", "ticket": "PAY-7"}


def test_headers_override_everything_and_never_reach_upstream(rig: Rig) -> None:
    row = rig.curl(rig.worktree, "-H", "X-Halton-Project: launch", "-H", "X-Halton-Tags: team=growth,bad key=x",
                   HALTON_METER_PROJECT="billing", HALTON_METER_TAGS="team=payments,ticket=PAY-7")
    assert who(row) == ("launch", "widgets", "feature/login")
    assert json.loads(row["tags"]) == {"team": "growth", "ticket": "PAY-7"}
    assert "override_dropped" in row["flags"].split()  # "bad key" is not a tag key
    assert row["status"] == 200  # the fake answers 400 when an X-Halton-* header reaches it
    seen = rig.upstream.seen[-1].headers
    assert not [h for h in seen if h.startswith("x-halton-")]


def test_a_path_rule_wins_over_the_repository_name(rig: Rig) -> None:
    row = rig.curl(rig.ruled)
    assert who(row) == ("acme", "svc-internal", "main")
    assert json.loads(row["tags"]) == {"team": "ml", "cost_center": "42"}


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to create and run as a second OS user")
def test_a_client_of_another_os_user_gets_null_fields(rig: Rig) -> None:
    created = subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0
    if created:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER], check=True)
    shared = Path(f"/tmp/hm-attr-{os.getpid()}")  # tmp_path's parents are 0700: the other user needs a way in
    shared.mkdir(mode=0o755, exist_ok=True)
    try:
        ca = shared / "ca.pem"
        shutil.copy(rig.daemon.ca_cert_path, ca)
        ca.chmod(0o644)
        row = rig.curl(shared, user=OTHER_USER, ca=ca)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        if created:
            subprocess.run(["userdel", OTHER_USER], capture_output=True)
    assert (row["project"], row["repo"], row["branch"], row["program"], row["os_user"], row["tags"]) == (
        None, None, None, None, None, None)
    assert "unattributed" in row["flags"].split()
    assert row["status"] == 200
    # answered from the socket's owner alone (the kernel's table), no process of that user was read
    assert rig.daemon.status()["attribution"]["unresolved"].get("other_user", 0) >= 1


def test_report_splits_by_project_and_filters(rig: Rig) -> None:
    out = rig.daemon.cli("report", "--by", "project", "--json")
    assert out.returncode == 0, out.stderr
    groups = {g["project"]: g["calls"] for g in json.loads(out.stdout)["groups"]}
    assert groups["widgets"] >= 2 and groups["gadgets"] >= 2 and groups["acme"] >= 1
    out = rig.daemon.cli("report", "--by", "branch", "--where", "project=widgets", "--json")
    assert out.returncode == 0, out.stderr
    assert [g["branch"] for g in json.loads(out.stdout)["groups"]] == ["feature/login"]
    out = rig.daemon.cli("report", "--by", "tag:team", "--json")
    assert {"ml", "payments", "growth"} <= {g["tag:team"] for g in json.loads(out.stdout)["groups"]}
    table = rig.daemon.cli("report", "--by", "project")
    assert table.returncode == 0 and "widgets" in table.stdout and "gadgets" in table.stdout


def test_the_split_reaches_the_cloud_dashboard(rig: Rig, browser: Any, tmp_path: Path) -> None:
    """Runs last: every row above goes through `cloud connect` and sync; the cloud agrees with the report."""
    from decimal import Decimal

    import httpx
    from playwright.sync_api import expect

    from tests.support.cloudserver import running_cloud

    from .test_cloud_e2e import finish_connect, start_connect, token_of

    local = json.loads(rig.daemon.cli("report", "--by", "project", "--json").stdout)["groups"]
    want = {g["project"]: (g["calls"], Decimal(g["cost_usd"] or 0)) for g in local}
    with running_cloud(tmp_path / "cloud") as cloud:
        cloud.create_user("lead@example.com", "attribution-pass-1", "acme")
        proc, code, _url = start_connect(rig.daemon, cloud)
        session = cloud.login_session("lead@example.com", "attribution-pass-1")
        assert cloud.approve(code, "acme", session).status_code == 200
        finish_connect(proc)
        headers = {"Authorization": f"Bearer {token_of(rig.daemon)}"}
        today = time.strftime("%Y-%m-%d", time.gmtime())
        params = {"from_date": today, "to_date": today, "group_by": "project"}

        def cloud_split() -> dict[Any, tuple[int, Decimal]]:
            answer = httpx.get(f"{cloud.base_url}/v1/requests/totals", params=params, headers=headers, timeout=10)
            assert answer.status_code == 200, answer.text
            return {g["key"]: (g["rows"], Decimal(g["cost_usd"])) for g in answer.json()["groups"]}

        deadline = time.monotonic() + 30
        while cloud_split() != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cloud_split() == want
        context = browser.new_context(viewport={"width": 1200, "height": 1400})
        try:
            page = context.new_page()
            page.goto(f"{cloud.app_url}/login")
            page.get_by_label("Email").fill("lead@example.com")
            page.get_by_label("Password").fill("attribution-pass-1")
            page.get_by_role("button", name="Sign in").click()
            page.goto(f"{cloud.app_url}/acme/?from_date={today}&to_date={today}")
            split = page.locator("section", has=page.get_by_role("heading", name="By project"))
            for project, (calls, _cost) in want.items():
                expect(split.get_by_role("row", name=project or "(none)")).to_contain_text(str(calls))
            members = page.locator("section", has=page.get_by_role("heading", name="By member"))
            expect(members).to_contain_text(f"{ME}@")
            page.screenshot(path=str(tmp_path / "dashboard-by-project.png"), full_page=True)
        finally:
            context.close()
