"""Backend defects an adversarial pass found in the pages landed after issue 10.

Each test here answered 500 (a traceback in the server log) before its fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.cloudserver import CloudServer, running_cloud

PASSWORD = "correct-horse-1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with running_cloud(tmp_path_factory.mktemp("cloud-redteam")) as server:
        server.create_user("mallory@example.com", PASSWORD, "mallory")
        yield server


@pytest.fixture(scope="module")
def session(cloud: CloudServer) -> httpx.Client:
    return cloud.login_session("mallory@example.com", PASSWORD)


def _no_traceback(cloud: CloudServer) -> None:
    assert "Traceback" not in cloud.log()


@pytest.mark.parametrize("day", ["0001-01-01", "0001-06-30", "1969-12-31"])
def test_a_dashboard_range_at_the_start_of_the_calendar_is_a_message_not_a_500(
    cloud: CloudServer, session: httpx.Client, day: str
) -> None:
    # The "change against the previous period" reached before date.min: OverflowError.
    page = session.get("/mallory/", params={"from_date": day, "to_date": day})
    assert page.status_code == 200
    assert "Dates start at 1970-01-01" in page.text
    _no_traceback(cloud)


@pytest.mark.parametrize("digits", ["\u00b2", "\u2460"])  # superscript two, circled one
def test_unicode_digits_in_numeric_fields_are_400_not_500(
    cloud: CloudServer, session: httpx.Client, digits: str
) -> None:
    # str.isdigit() says yes to these, int() says no: a ValueError in the handler.
    audit = session.get("/mallory/settings/audit", params={"before": digits})
    assert audit.status_code == 200
    csrf = cloud.csrf(session, "/mallory/settings/members")
    role = session.post(
        "/mallory/settings/members",
        data={"csrf_token": csrf, "action": "role", "user_id": digits, "role": "admin"},
    )
    assert role.status_code == 400
    assert "not a member of this workspace" in role.text
    _no_traceback(cloud)
