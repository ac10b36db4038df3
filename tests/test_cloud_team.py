"""The team cloud over HTTP on a real server (SQLite and PostgreSQL): the role
matrix of docs/cloud.md cell by cell, invitations, devices by owner, read-only
API keys, the audit log, workspaces per person, and the schema upgrade to 3.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import MetaData, Table, create_engine, inspect, select, text, update

from hm_cloud import db, team
from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row
from tests.support.smtpsink import smtp_sink

pytestmark = pytest.mark.slow
PASSWORD = "team-pass-123"
_LINK = re.compile(r'value="(http://[^"]+/invite/[^"]+)"')
_KEY = re.compile(r'value="(hm_read_[0-9A-Za-z]+)"')
ROLES = team.ROLES
ELSEWHERE = "2025-01-02T10:00:00.000Z"  # rows of tests that do not read them: off the days read


@dataclass
class Team:
    cloud: CloudServer
    db_url: str
    people: dict[str, httpx.Client] = field(default_factory=dict)  # role -> signed-in client
    ids: dict[str, int] = field(default_factory=dict)  # email -> user id

    def post(self, who: httpx.Client, path: str, **data: str) -> httpx.Response:
        return who.post(path, data={"csrf_token": self.cloud.csrf(who, "/acme/settings/devices"), **data})

    def invite(self, role: str = "member", by: str = "owner", email: str = "") -> str:
        page = self.post(self.people[by], "/acme/settings/members", action="invite", role=role, email=email)
        assert page.status_code == 200, page.text
        found = _LINK.search(page.text)
        assert found, page.text
        return found.group(1)

    def join(self, link: str, email: str) -> httpx.Client:
        """Open the link signed out and sign up: a new person in the workspace."""
        person = self.cloud.client()
        path = link.split("://", 1)[1].split("/", 1)[1]
        answer = person.post("/" + path, data={"csrf_token": self.cloud.csrf(person, "/" + path),
                                               "email": email, "password": PASSWORD})
        assert answer.status_code == 303 and answer.headers["location"] == "/acme/", answer.text
        self.ids[email] = self.user_id(email)
        return person

    def accept(self, link: str, person: httpx.Client) -> httpx.Response:
        path = "/" + link.split("://", 1)[1].split("/", 1)[1]
        return person.post(path, data={"csrf_token": self.cloud.csrf(person, path)})

    def user_id(self, email: str) -> int:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(db.users.c.id).where(db.users.c.email == email)).scalar_one())
        finally:
            engine.dispose()

    def sql(self, statement: Any) -> list[Any]:
        engine = create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(statement)
                return list(result.all()) if result.returns_rows else []
        finally:
            engine.dispose()

    def pair(self, by: httpx.Client, hostname: str) -> tuple[str, str]:
        """A device approved by ``by``: (its id, its sync token)."""
        started = self.cloud.start_pairing(hostname=hostname, workspace="acme")
        approved = self.cloud.approve(started["user_code"], "acme", by)
        assert approved.status_code == 200, approved.text
        token = self.cloud.poll(started["device_code"])["token"]
        found = self.sql(select(db.devices.c.id).where(db.devices.c.hostname == hostname))
        return str(found[0][0]), token


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def acme(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    tmp = tmp_path_factory.mktemp(f"team-{request.param}")
    url = (request.getfixturevalue("postgres").create_database("hm_cloud_team") if request.param == "postgresql"
           else f"sqlite:///{tmp / 'cloud.sqlite'}")
    with running_cloud(tmp, db_url=url) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        t = Team(cloud, url)
        t.people["owner"] = cloud.login_session("owner@example.com", PASSWORD)
        t.ids["owner@example.com"] = t.user_id("owner@example.com")
        for role in ("admin", "member", "viewer"):
            t.people[role] = t.join(t.invite(role), f"{role}@example.com")
        t.people["target"] = t.join(t.invite("member"), "target@example.com")
        yield t


# -- the role matrix, cell by cell -------------------------------------------------------


def _allowed(answer: httpx.Response) -> bool:
    assert answer.status_code in (200, 303, 403), (answer.status_code, answer.text[:500])
    return answer.status_code != 403


def _reset_target(t: Team) -> None:
    """The target back to a plain member of acme (re-invited when removed)."""
    target = t.ids["target@example.com"]
    still = t.sql(select(db.memberships.c.role).where(db.memberships.c.user_id == target))
    if not still:
        assert t.accept(t.invite("member"), t.people["target"]).status_code == 303
    else:
        assert t.post(t.people["owner"], "/acme/settings/members", action="role", user_id=str(target),
                      role="member").status_code == 303


def _do(t: Team, role: str, action: str) -> httpx.Response:
    who = t.people[role]
    target = str(t.ids["target@example.com"])
    if action == "view_dashboard":
        return who.get("/acme/")
    if action == "view_devices":
        return who.get("/acme/settings/devices")
    if action == "view_members":
        return who.get("/acme/settings/members")
    if action == "pair_device":
        started = t.cloud.start_pairing(hostname=f"pair-{role}", workspace="acme")
        answer = t.cloud.approve(started["user_code"], "acme", who)
        assert answer.status_code in (200, 403), answer.text
        return httpx.Response(200 if answer.status_code == 200 else 403)
    if action == "revoke_own_device":
        if role == "viewer":  # paired while a member, then made a viewer
            _set_role(t, "viewer@example.com", "member")
            device, _ = t.pair(who, f"own-{role}-{uuid.uuid4().hex[:6]}")
            _set_role(t, "viewer@example.com", "viewer")
        else:
            device, _ = t.pair(who, f"own-{role}-{uuid.uuid4().hex[:6]}")
        return t.post(who, f"/acme/settings/devices/{device}/revoke")
    if action == "revoke_any_device":
        device, _ = t.pair(t.people["owner"], f"any-{role}-{uuid.uuid4().hex[:6]}")
        return t.post(who, f"/acme/settings/devices/{device}/revoke")
    if action == "invite":
        return t.post(who, "/acme/settings/members", action="invite", role="viewer")
    if action == "revoke_invitation":
        t.invite("viewer")
        newest = t.sql(select(db.invitations.c.id).where(db.invitations.c.used_at.is_(None),
                                                         db.invitations.c.revoked_at.is_(None)))
        return t.post(who, "/acme/settings/members", action="revoke_invitation", invitation_id=str(newest[0][0]))
    if action == "change_role":
        return t.post(who, "/acme/settings/members", action="role", user_id=target, role="viewer")
    if action == "make_owner":
        return t.post(who, "/acme/settings/members", action="role", user_id=target, role="owner")
    if action == "remove_member":
        return t.post(who, "/acme/settings/members", action="remove", user_id=target)
    if action == "change_settings":
        return t.post(who, "/acme/settings/budgets", name=f"b-{role}", scope_kind="workspace", period="month",
                      limit_usd="5", thresholds="100")
    if action == "manage_api_keys":
        return t.post(who, "/acme/settings/api-keys", action="create", name=f"key-{role}")
    if action == "view_audit":
        return who.get("/acme/settings/audit")
    raise AssertionError(action)


def _set_role(t: Team, email: str, role: str) -> None:
    answer = t.post(t.people["owner"], "/acme/settings/members", action="role", user_id=str(t.ids[email]), role=role)
    assert answer.status_code == 303, answer.text


MATRIX_ACTIONS = [a for a in team.PERMISSIONS if a != "leave"]  # leaving: test_last_owner_rule


def test_every_role_and_action_is_allowed_exactly_as_the_matrix_says(acme: Team) -> None:
    seen: dict[tuple[str, str], bool] = {}
    for action in MATRIX_ACTIONS:
        for role in ROLES:
            seen[(role, action)] = _allowed(_do(acme, role, action))
            _reset_target(acme)
    expected = {(role, action): team.can(role, action) for action in MATRIX_ACTIONS for role in ROLES}
    wrong = {cell: got for cell, got in seen.items() if got != expected[cell]}
    assert not wrong, f"cells that disagree with docs/cloud.md (role, action): allowed? {wrong}"
    # every role was tried for every action: 4 x 14 cells
    assert len(seen) == len(ROLES) * len(MATRIX_ACTIONS) == 56


def test_last_owner_rule_and_only_an_owner_makes_owners(acme: Team) -> None:
    owner_id = str(acme.ids["owner@example.com"])
    demote = acme.post(acme.people["owner"], "/acme/settings/members", action="role", user_id=owner_id, role="admin")
    assert demote.status_code == 400 and "last owner" in demote.text
    leave = acme.post(acme.people["owner"], "/acme/settings/members", action="remove", user_id=owner_id)
    assert leave.status_code == 400 and "last owner" in leave.text
    # an admin can neither invite an owner, nor demote or remove one
    admin = acme.people["admin"]
    assert acme.post(admin, "/acme/settings/members", action="invite", role="owner").status_code == 403
    assert acme.post(admin, "/acme/settings/members", action="role", user_id=owner_id, role="member").status_code == 403
    assert acme.post(admin, "/acme/settings/members", action="remove", user_id=owner_id).status_code == 403
    # with a second owner the first may leave: then the second is the last one
    _set_role(acme, "target@example.com", "owner")
    second = acme.people["target"]
    target_id = str(acme.ids["target@example.com"])
    assert acme.post(second, "/acme/settings/members", action="role", user_id=target_id,
                     role="member").status_code == 303  # two owners: demoting one is fine
    _set_role(acme, "target@example.com", "member")
    # a viewer may leave; leaving lands on / (their other workspaces, or a new one)
    viewer_id = str(acme.ids["viewer@example.com"])
    left = acme.post(acme.people["viewer"], "/acme/settings/members", action="remove", user_id=viewer_id)
    assert left.status_code == 303 and left.headers["location"] == "/"
    assert acme.people["viewer"].get("/acme/").status_code == 404
    assert acme.accept(acme.invite("viewer"), acme.people["viewer"]).status_code == 303


# -- invitations -------------------------------------------------------------------------------


def test_an_invitation_works_once_expires_and_is_stored_only_as_a_hash(acme: Team) -> None:
    link = acme.invite("viewer")
    token = link.rsplit("/", 1)[1]
    stored = acme.sql(select(db.invitations))
    assert all(token not in str(tuple(row)) for row in stored)  # only its SHA-256
    person = acme.join(link, f"once-{uuid.uuid4().hex[:6]}@example.com")
    assert "Workspace: <strong>acme" in person.get("/acme/").text
    again = acme.cloud.client().get(link.split(acme.cloud.base_url, 1)[1])
    assert again.status_code == 404 and "used, revoked or is older than 7 days" in again.text
    # expired (made 7 days and a second ago) and revoked links are refused the same way
    old = acme.invite("viewer")
    acme.sql(update(db.invitations).where(db.invitations.c.used_at.is_(None), db.invitations.c.revoked_at.is_(None))
             .values(expires_at=time.time() - 1))
    assert acme.cloud.client().get(old.split(acme.cloud.base_url, 1)[1]).status_code == 404
    revoked = acme.invite("viewer")
    inv_id = acme.sql(select(db.invitations.c.id).where(db.invitations.c.used_at.is_(None),
                                                        db.invitations.c.revoked_at.is_(None),
                                                        db.invitations.c.expires_at > time.time()))[0][0]
    pending = acme.people["admin"].get("/acme/settings/members").text
    assert "Pending invitations" in pending and inv_id in pending
    assert acme.post(acme.people["admin"], "/acme/settings/members", action="revoke_invitation",
                     invitation_id=inv_id).status_code == 303
    assert acme.cloud.client().get(revoked.split(acme.cloud.base_url, 1)[1]).status_code == 404
    # a signed-in person opening a link joins with one click
    existing = acme.people["target"]
    other = acme.cloud.login_session("owner@example.com", PASSWORD)
    assert acme.post(other, "/workspaces/new", name="Second Team").status_code == 303
    acme.people["owner2"] = other
    link2 = acme.post(other, "/second-team/settings/members", action="invite", role="member")
    found = _LINK.search(link2.text)
    assert found
    joined = acme.accept(found.group(1), existing)
    assert joined.status_code == 303 and joined.headers["location"] == "/second-team/"


def test_an_invitation_is_also_sent_by_email_when_smtp_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with smtp_sink(monkeypatch, "cloud@example.com") as sink, running_cloud(tmp_path) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        t = Team(cloud, cloud.db_url, {"owner": cloud.login_session("owner@example.com", PASSWORD)})
        link = t.invite("member", email="new@example.com")
        deadline = time.monotonic() + 15
        while not sink.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.messages, cloud.log()
        to, raw = sink.messages[0]
        mail = message_from_bytes(raw)
        assert to == ["new@example.com"] and "acme" in mail["Subject"]
        assert link in mail.get_payload()


def test_invitation_emails_are_limited_per_account_so_the_server_is_no_spam_relay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Anyone can sign up, name a workspace with any text and invite any address: with SMTP
    # set, invite-revoke-invite mailed that text to unlimited addresses.
    from hm_cloud.limits import INVITATION_EMAILS_PER_ACCOUNT

    with smtp_sink(monkeypatch, "cloud@example.com") as sink, running_cloud(tmp_path) as cloud:
        cloud.create_user("owner@example.com", PASSWORD, "acme")
        t = Team(cloud, cloud.db_url, {"owner": cloud.login_session("owner@example.com", PASSWORD)})
        allowed = INVITATION_EMAILS_PER_ACCOUNT.count
        pages = [t.post(t.people["owner"], "/acme/settings/members", action="invite", role="viewer",
                        email=f"victim{n}@example.com") for n in range(allowed + 3)]
        assert all(page.status_code == 200 and _LINK.search(page.text) for page in pages)  # links still made
        assert sum("Not e-mailed: too many invitation e-mails" in page.text for page in pages) == 3
        deadline = time.monotonic() + 30
        while len(sink.messages) < allowed and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(sink.messages) == allowed


# -- devices by owner ----------------------------------------------------------------------------


def test_devices_show_their_owner_and_members_revoke_only_their_own(acme: Team) -> None:
    mine, _ = acme.pair(acme.people["member"], "members-laptop")
    theirs, _ = acme.pair(acme.people["admin"], "admins-laptop")
    page = acme.people["member"].get("/acme/settings/devices").text
    assert "member@example.com" in page and "admin@example.com" in page
    assert f"/acme/settings/devices/{mine}/revoke" in page
    assert f"/acme/settings/devices/{theirs}/revoke" not in page
    assert acme.people["member"].get(f"/acme/settings/devices/{theirs}/revoke").status_code == 403
    assert acme.post(acme.people["member"], f"/acme/settings/devices/{mine}/revoke").status_code == 303
    assert f"/acme/settings/devices/{theirs}/revoke" in acme.people["admin"].get("/acme/settings/devices").text
    viewer_page = acme.people["viewer"].get("/acme/settings/devices").text
    assert "/revoke" not in viewer_page


def test_a_member_cannot_take_over_another_persons_machine_by_pairing_its_machine_id(acme: Team) -> None:
    # Machine ids are on the devices page for every member. Approving a pairing that
    # names another person's machine id revoked their machine (401 from then on) and
    # gave its device, history and identity to the member: a member revoking (and
    # impersonating) a device the role matrix says only its owner or an admin may.
    _, owners_token = acme.pair(acme.people["owner"], "owners-box")
    victim = str(acme.sql(select(db.devices.c.machine_id).where(db.devices.c.hostname == "owners-box"))[0][0])
    started = acme.cloud.start_pairing(machine_id=victim, hostname="members-fake", workspace="acme")
    refused = acme.cloud.approve(started["user_code"], "acme", acme.people["member"])
    assert refused.status_code == 403 and "already paired" in refused.json()["detail"], refused.text
    form = acme.post(acme.people["member"], "/v1/pairing/approve", user_code=started["user_code"], workspace="acme")
    assert form.status_code == 403 and "already paired" in form.text
    batch = acme.cloud.client().post("/v1/requests/batch", json=batch_body([sample_row(ts=ELSEWHERE)]),
                                     headers={"Authorization": f"Bearer {owners_token}"})
    assert batch.status_code == 200, batch.text
    owner_of = acme.sql(select(db.devices.c.approved_by).where(db.devices.c.machine_id == victim))
    assert owner_of == [(acme.ids["owner@example.com"],)]
    # A member re-pairs their own machine, and an admin may re-pair anyone's.
    own = str(uuid.uuid4())
    for _ in range(2):
        again = acme.cloud.start_pairing(machine_id=own, hostname="members-own", workspace="acme")
        assert acme.cloud.approve(again["user_code"], "acme", acme.people["member"]).status_code == 200
    by_admin = acme.cloud.start_pairing(machine_id=victim, hostname="owners-box", workspace="acme")
    assert acme.cloud.approve(by_admin["user_code"], "acme", acme.people["admin"]).status_code == 200


def test_a_removed_or_departed_members_machines_stop_uploading(acme: Team) -> None:
    # Removing someone deleted the membership only: the machines they paired kept their
    # tokens, so a removed member went on uploading rows (and bodies) into the workspace.
    for how in ("remove", "leave"):
        email = f"gone-{how}@example.com"
        person = acme.join(acme.invite("member"), email)
        _, token = acme.pair(person, f"gone-{how}-box")
        device = acme.cloud.client(headers={"Authorization": f"Bearer {token}"})
        assert device.post("/v1/requests/batch", json=batch_body([sample_row(ts=ELSEWHERE)])).status_code == 200
        who = acme.people["admin"] if how == "remove" else person
        assert acme.post(who, "/acme/settings/members", action="remove", user_id=str(acme.ids[email])).status_code == 303
        assert device.post("/v1/requests/batch", json=batch_body([sample_row(ts=ELSEWHERE)])).status_code == 401
        assert acme.sql(select(db.devices.c.revoked_at).where(db.devices.c.hostname == f"gone-{how}-box"))[0][0]
        assert f"{email} (member, 1 device revoked)" in acme.people["owner"].get("/acme/settings/audit").text


# -- read-only API keys ----------------------------------------------------------------------------


def _read_key(acme: Team, name: str) -> tuple[re.Match[str], httpx.Client]:
    """An admin creates a read-only API key: its match on the page, and a client using it."""
    page = acme.post(acme.people["admin"], "/acme/settings/api-keys", action="create", name=name)
    key = _KEY.search(page.text)
    assert page.status_code == 200 and key, page.text
    return key, acme.cloud.client(headers={"Authorization": f"Bearer {key.group(1)}"})


def test_a_read_key_reads_usage_as_json_and_csv_and_cannot_upload(acme: Team) -> None:
    _, token = acme.pair(acme.people["member"], f"uploader-{uuid.uuid4().hex[:6]}")
    machine = acme.cloud.client(headers={"Authorization": f"Bearer {token}"})
    rows = [sample_row(ts="2026-11-24T10:00:00.000Z", model="gpt-4o", cost_usd="0.25"),
            sample_row(ts="2026-11-25T10:00:00.000Z", model="=cmd()", cost_usd="0.5"),
            sample_row(ts="2026-11-25T11:00:00.000Z", model="gpt-4o", cost_usd=None)]
    assert machine.post("/v1/requests/batch", json=batch_body(rows)).json()["accepted"] == 3
    key, reader = _read_key(acme, "grafana")
    window = "from_date=2026-11-24&to_date=2026-11-25"
    by_day = reader.get(f"/v1/usage?{window}").json()
    assert by_day["group_by"] == "day" and [(g["key"], g["cost_usd"], g["rows"]) for g in by_day["groups"]] == [
        ("2026-11-24", "0.25", 1), ("2026-11-25", "0.5", 2)]
    by_model = reader.get(f"/v1/usage?{window}&group_by=model&format=csv")
    assert by_model.status_code == 200 and by_model.headers["content-type"].startswith("text/csv")
    lines = by_model.text.strip().split("\r\n")
    assert lines[0] == "key,label,rows,cost_usd,unknown_price_rows,no_usage_rows,error_rows,input_tokens,output_tokens"
    assert "'=cmd(),'=cmd(),1,0.5,0,0,0,100,20" in lines and "gpt-4o,gpt-4o,2,0.25,1,0,0,200,40" in lines
    for bad in ("group_by=repo", "format=xml", "from_date=2026-13-01", "from_date=2026-11-26&to_date=2026-11-25"):
        answer = reader.get(f"/v1/usage?{bad}")
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", bad
    # a read key cannot upload, a sync token cannot read the workspace
    refused = reader.post("/v1/requests/batch", json=batch_body([sample_row(ts=ELSEWHERE)]))
    assert refused.status_code == 403 and "read" in refused.json()["detail"]
    assert machine.get(f"/v1/usage?{window}").status_code == 403
    assert acme.cloud.client().get("/v1/usage").status_code == 401
    keys = acme.people["admin"].get("/acme/settings/api-keys").text
    assert "grafana" in keys and "s ago" in keys  # last used
    key_id = acme.sql(select(db.api_keys.c.id).where(db.api_keys.c.name == "grafana"))[0][0]
    assert key.group(1) not in str(acme.sql(select(db.api_keys)))  # hashed
    assert acme.post(acme.people["admin"], "/acme/settings/api-keys", action="revoke",
                     key_id=key_id).status_code == 303
    assert reader.get("/v1/usage").status_code == 401


def test_a_read_key_reads_usage_as_focus_csv_whose_billed_cost_sums_to_the_totals(acme: Team) -> None:
    import csv
    import io
    from decimal import Decimal

    from hm_charts.focus import COLUMNS

    _, token = acme.pair(acme.people["member"], f"focus-{uuid.uuid4().hex[:6]}")
    machine = acme.cloud.client(headers={"Authorization": f"Bearer {token}"})
    rows = [sample_row(ts="2026-10-14T10:00:00.000Z", provider="anthropic", model="claude-sonnet-4-5",
                       cost_usd="0.125", project="acme", cache_read_tokens=50),
            sample_row(ts="2026-10-14T11:00:00.000Z", provider="anthropic", model="claude-sonnet-4-5",
                       cost_usd="0.000000001", project="acme"),
            sample_row(ts="2026-10-15T10:00:00.000Z", model="=cmd()", cost_usd="0.5", project="+evil"),
            sample_row(ts="2026-10-15T11:00:00.000Z", model="acme-private-1", cost_usd=None)]
    assert machine.post("/v1/requests/batch", json=batch_body(rows)).json()["accepted"] == 4
    _, reader = _read_key(acme, "finops")
    window = "from_date=2026-10-14&to_date=2026-10-15"
    answer = reader.get(f"/v1/usage?{window}&format=focus")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.text.split("\r\n")[0] == ",".join(COLUMNS)
    lines = list(csv.DictReader(io.StringIO(answer.text)))
    assert {(r["BillingCurrency"], r["ChargeCategory"], r["ServiceCategory"], r["ConsumedUnit"]) for r in lines} == {
        ("USD", "Usage", "AI and Machine Learning", "Tokens")}
    sonnet = next(r for r in lines if r["SkuId"] == "claude-sonnet-4-5")
    assert (sonnet["BilledCost"], sonnet["EffectiveCost"], sonnet["ListCost"]) == ("0.125000001",) * 3
    assert (sonnet["ServiceName"], sonnet["PublisherName"], sonnet["x_Project"]) == ("Anthropic API", "Anthropic", "acme")
    assert (sonnet["ChargePeriodStart"], sonnet["ChargePeriodEnd"]) == ("2026-10-14T00:00:00Z", "2026-10-15T00:00:00Z")
    assert (sonnet["ConsumedQuantity"], sonnet["x_InputTokens"], sonnet["x_CacheReadTokens"], sonnet["x_Calls"]) == (
        "240", "200", "50", "2")
    assert sonnet["x_Machine"] and sonnet["x_CostUnknown"] == "false"
    evil = next(r for r in lines if r["SkuId"] == "'=cmd()")  # formulas are not run by a spreadsheet
    assert evil["x_Project"] == "'+evil" and evil["ChargeDescription"] == "'=cmd() on OpenAI API"
    unpriced = next(r for r in lines if r["SkuId"] == "acme-private-1")
    assert unpriced["BilledCost"] == "" and unpriced["x_CostUnknown"] == "true"  # never $0
    totals = reader.get(f"/v1/usage?{window}").json()["groups"]
    billed = sum(Decimal(r["BilledCost"]) for r in lines if r["BilledCost"])
    assert billed == sum(Decimal(g["cost_usd"]) for g in totals) == Decimal("0.625000001")
    assert sum(int(r["x_Calls"]) for r in lines) == sum(g["rows"] for g in totals) == 4


# -- audit log ---------------------------------------------------------------------------------


def test_the_audit_log_records_each_kind_of_action(acme: Team) -> None:
    # runs after the tests above in this module, which did every kind of action
    page = acme.people["owner"].get("/acme/settings/audit")
    assert page.status_code == 200
    for action in ("invitation.create", "invitation.revoke", "member.join", "member.role", "member.remove",
                   "member.leave", "device.approve", "device.revoke", "settings.budget", "api_key.create",
                   "api_key.revoke"):
        assert f"<code>{action}</code>" in page.text, action
    entry = acme.sql(select(db.audit_log).where(db.audit_log.c.action == "member.role"))[0]._mapping
    assert entry["actor"] and entry["address"] == "127.0.0.1" and "→" in entry["target"]


# -- workspaces per person ----------------------------------------------------------------------


def test_one_person_many_workspaces_switcher_and_slash_opens_the_last_used(acme: Team) -> None:
    owner = acme.cloud.login_session("owner@example.com", PASSWORD)
    made = acme.post(owner, "/workspaces/new", name="Research Lab")
    assert made.status_code == 303 and made.headers["location"] == "/research-lab/"
    assert acme.post(owner, "/workspaces/new", name="Research Lab").status_code == 400  # taken
    assert acme.post(owner, "/workspaces/new", name="login").status_code == 400  # reserved
    page = owner.get("/research-lab/").text
    assert "Workspace: <strong>Research Lab</strong>" in page and 'href="/acme/"' in page
    assert owner.get("/").headers["location"] == "/research-lab/"
    owner.get("/acme/")
    assert owner.get("/").headers["location"] == "/acme/"
    no_csrf = owner.post("/workspaces/new", data={"name": "Sneaky"})
    assert no_csrf.status_code == 403


def test_one_person_creates_at_most_the_bounded_number_of_workspaces(tmp_path: Path) -> None:
    from hm_cloud.store import SignupError, create_user

    engine = db.make_engine(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    try:
        db.init_schema(engine)
        uid, _ = create_user(engine, "many@example.com", "x", "ws-0", "ws-0", 1.0)
        for n in range(1, team.MAX_WORKSPACES_PER_PERSON):
            team.create_workspace(engine, uid, "many@example.com", f"ws-{n}", f"ws {n}", "127.0.0.1", 1.0)
        with pytest.raises(SignupError, match="leave one"):
            team.create_workspace(engine, uid, "many@example.com", "one-more", "one more", "127.0.0.1", 1.0)
    finally:
        engine.dispose()


def _demote(engine: Any, ws_id: str, actor: int, target: int, start: Any, outcomes: list[str]) -> None:
    start.wait()
    try:
        team.change_role(engine, ws_id, actor, "x", target, "member", None, 2.0)
        outcomes.append("done")
    except (team.TeamError, PermissionError) as exc:
        outcomes.append(type(exc).__name__)


@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"])
def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    engine_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import threading

    from hm_cloud.store import create_user

    url = (request.getfixturevalue("postgres").create_database(f"hm_owners_{uuid.uuid4().hex[:8]}")
           if engine_name == "postgresql" else f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    engine = db.make_engine(url)
    try:
        db.init_schema(engine)
        for round_ in range(5):
            a, ws = create_user(engine, f"a{round_}@example.com", "x", f"race-{round_}", "race", 1.0)
            b, _ = create_user(engine, f"b{round_}@example.com", "x", f"race-{round_}", "race", 1.0,
                               join_existing_workspace=True)
            team.change_role(engine, ws.id, a, "a", b, "owner", None, 1.0)
            start = threading.Barrier(2)
            outcomes: list[str] = []

            threads = [threading.Thread(target=_demote, args=(engine, ws.id, actor, target, start, outcomes))
                       for actor, target in ((a, b), (b, a))]
            # Hold the two membership rows (SQLite: the write lock) so both changes are in flight at
            # once: without the workspace lock both would count two owners, then both demote.
            with engine.connect() as hold:
                if engine_name == "sqlite":
                    hold.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    hold.begin()
                    hold.execute(select(db.memberships).where(db.memberships.c.workspace_id == ws.id)
                                 .with_for_update())
                for t in threads:
                    t.start()
                time.sleep(0.5)  # let both reach the lock (if they do not, the test only gets easier)
                hold.rollback()
            for t in threads:
                t.join(30)
            owners = [m for m in team.list_members(engine, ws.id) if m["role"] == "owner"]
            assert len(owners) == 1 and outcomes.count("done") == 1, outcomes
    finally:
        engine.dispose()


# -- schema version 3 ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def v2_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"hm_v2_{uuid.uuid4().hex[:8]}")
    else:
        url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    engine = db.make_engine(url)
    old = MetaData()
    for table in db.metadata.sorted_tables:
        if table.name in ("invitations", "audit_log", "api_keys"):
            continue
        dropped = {"users": "last_workspace_id", "devices": "approved_by"}.get(table.name)
        Table(table.name, old, *[c._copy() for c in table.columns if c.name != dropped])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["schema_version"].insert().values(version=2))
        conn.execute(old.tables["users"].insert().values(id=1, email="old@example.com", password_hash="x",
                                                         created_at=1.0))
        conn.execute(old.tables["workspaces"].insert().values(id="w1", slug="old", name="Old", created_at=1.0))
        conn.execute(old.tables["memberships"].insert().values(user_id=1, workspace_id="w1", role="owner"))
        conn.execute(old.tables["devices"].insert().values(
            id="d1", workspace_id="w1", machine_id="m1", hostname="old-host", os="linux", agent_version="0.2",
            paired_at=1.0, rows_synced=0))
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_version_2_database_is_upgraded_to_3_in_place(v2_engine: Any) -> None:
    db.init_schema(v2_engine)
    inspector = inspect(v2_engine)
    assert "last_workspace_id" in {c["name"] for c in inspector.get_columns("users")}
    assert "approved_by" in {c["name"] for c in inspector.get_columns("devices")}
    assert {"invitations", "audit_log", "api_keys"} <= set(inspector.get_table_names())
    with v2_engine.connect() as conn:
        assert conn.execute(select(db.schema_version.c.version)).scalar_one() == db.SCHEMA_VERSION >= 3
        device = conn.execute(select(db.devices.c.hostname, db.devices.c.approved_by)).one()
        assert tuple(device) == ("old-host", None)  # kept; no owner recorded before 3
        assert conn.execute(text("SELECT role FROM memberships")).scalar_one() == "owner"
    db.init_schema(v2_engine)  # again: nothing to do



def test_the_dashboard_downloads_its_current_view_as_csv(acme: Team) -> None:
    _, token = acme.pair(acme.people["owner"], f"csv-{uuid.uuid4().hex[:6]}")
    machine = acme.cloud.client(headers={"Authorization": f"Bearer {token}"})
    rows = [sample_row(ts="2026-10-02T10:00:00.000Z", model="gpt-4o", provider="openai", cost_usd="1.5"),
            sample_row(ts="2026-10-02T11:00:00.000Z", model="claude-x", provider="anthropic", cost_usd="0.5"),
            sample_row(ts="2026-10-03T11:00:00.000Z", model="gpt-4o", provider="openai", cost_usd="0.25")]
    assert machine.post("/v1/requests/batch", json=batch_body(rows)).json()["accepted"] == 3
    page = acme.people["viewer"].get("/acme/?from_date=2026-10-01&to_date=2026-10-05&chart=provider&provider=openai")
    assert page.status_code == 200 and "provider = openai" in page.text
    href = re.search(r'href="(/acme/spend\.csv\?[^"]+)"', page.text)
    assert href, page.text
    csv_text = acme.people["viewer"].get(href.group(1).replace("&amp;", "&"))
    assert csv_text.headers["content-type"].startswith("text/csv")
    assert csv_text.text.strip().split("\r\n") == [
        "date,key,label,rows,cost_usd,unknown_price_rows,no_usage_rows,error_rows",
        "2026-10-02,openai,openai,1,1.5,0,0,0",
        "2026-10-03,openai,openai,1,0.25,0,0,0",
    ]
    # the previous period of equal length is compared, and bad parameters are a sentence, not a 500
    assert "vs the previous" in page.text or "previous 5 days" in page.text
    odd = acme.people["viewer"].get("/acme/?chart=%3Cscript%3E&sort=sideways")
    assert odd.status_code == 200 and "showing models" in odd.text and "<script>" not in odd.text.split("<main")[1]
    # by person: the workspace member who paired the machine (the owner paired the csv machine)
    window = "from_date=2026-10-01&to_date=2026-10-05"
    mine = acme.people["viewer"].get(f"/acme/?{window}&person=owner%40example.com")
    assert "person = owner@example.com" in mine.text and "$2.25" in mine.text
    theirs = acme.people["viewer"].get(f"/acme/?{window}&person=member%40example.com")
    assert "$2.25" not in theirs.text and "No calls in this range." in theirs.text
    by_person = acme.people["viewer"].get(f"/acme/spend.csv?{window}&chart=person").text.strip().split("\r\n")
    assert by_person[1:] == ["2026-10-02,owner@example.com,owner@example.com,2,2,0,0,0",
                             "2026-10-03,owner@example.com,owner@example.com,1,0.25,0,0,0"]
