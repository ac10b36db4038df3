"""Reconciler, date helpers, revoke and whoami: pure, no I/O."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hm_proto import (
    CallFailed,
    LocalProtocolError,
    Reconciler,
    ReconcileResult,
    RemoteProtocolError,
    Response,
    RetryLater,
    Revoked,
    TransportFailure,
    Unauthorised,
    WhoAmI,
    add_days,
    date_range,
    days_between,
    is_valid_date,
    parse_whoami,
    receive_revoke,
    revoke_request,
    validate_date,
    whoami_request,
)
from hm_proto._dates import date_from_day_number, day_number

TOKEN = "hm_sync_abc"


def reply(status: int, body: object, **headers: str) -> Response:
    return Response(status, tuple(headers.items()), json.dumps(body).encode())


# -- dates --------------------------------------------------------------------------

dates = st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))


@given(dates)
def test_day_numbers_match_the_proleptic_gregorian_calendar(day: dt.date) -> None:
    text = day.isoformat()
    number = day_number(text)
    assert number == (day - dt.date(1970, 1, 1)).days
    assert date_from_day_number(number) == text


@given(dates, st.integers(-5000, 5000))
def test_add_days_and_days_between_agree_with_datetime(day: dt.date, delta: int) -> None:
    try:
        expected = (day + dt.timedelta(days=delta)).isoformat()
    except OverflowError:
        return
    assert add_days(day.isoformat(), delta) == expected
    assert days_between(day.isoformat(), expected) == delta


def test_date_edges() -> None:
    assert add_days("2024-02-28", 1) == "2024-02-29"
    assert add_days("2023-02-28", 1) == "2023-03-01"
    assert add_days("2000-02-28", 1) == "2000-02-29"
    assert add_days("1900-02-28", 1) == "1900-03-01"
    assert add_days("2026-12-31", 1) == "2027-01-01"
    assert date_range("2026-02-27", "2026-03-02") == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
        "2026-03-02",
    ]
    assert date_range("2026-03-02", "2026-03-01") == []


@pytest.mark.parametrize(
    "bad",
    [
        "2026-2-1",
        "2026-02-30",
        "2023-02-29",
        "20260201",
        "",
        "2026-13-01",
        "0000-01-01",
        "２０２６-01-01",
        "2026-01-01\n",
    ],
)
def test_invalid_dates_are_rejected_with_a_hint(bad: str) -> None:
    assert not is_valid_date(bad)
    with pytest.raises(LocalProtocolError, match="2026-11-24"):
        validate_date(bad)


# -- reconcile ------------------------------------------------------------------------


def test_totals_request_uses_from_date_and_to_date() -> None:
    request = Reconciler.last_days("2026-11-24", 30).totals_request(TOKEN)
    parts = urlsplit(request.target)
    assert request.method == "GET" and parts.path == "/v1/requests/totals"
    assert parse_qs(parts.query) == {"from_date": ["2026-10-26"], "to_date": ["2026-11-24"]}
    assert request.header("authorization") == f"Bearer {TOKEN}"


def test_reconcile_names_the_days_to_resend() -> None:
    rec = Reconciler("2026-11-20", "2026-11-24")
    cloud = reply(
        200,
        {
            "days": [
                {"date": "2026-11-20", "rows": 10, "cost_usd": "1.50"},
                {"date": "2026-11-21", "rows": 3, "cost_usd": "0.30"},
                {"date": "2026-11-22", "rows": 9, "cost_usd": "2.00"},
                {"date": "2026-11-23", "rows": 4, "cost_usd": "0.40"},
                {"date": "2026-11-01", "rows": 99, "cost_usd": "9"},  # outside: ignored
            ]
        },
    )
    local = {
        "2026-11-20": (10, "1.5"),  # same count, same cost (different spelling)
        "2026-11-21": (5, "0.50"),  # cloud lacks rows
        "2026-11-22": (7, "1.00"),  # cloud has more: report only
        "2026-11-23": (4, "0.41"),  # same count, other cost
        "2026-11-24": (2, None),  # cloud has nothing
        "2026-10-01": (1, "1"),  # outside the range
    }
    result = rec.receive_totals(cloud, local)
    assert result == ReconcileResult(
        from_date="2026-11-20",
        to_date="2026-11-24",
        days_to_resend=("2026-11-21", "2026-11-23", "2026-11-24"),
        matching_days=("2026-11-20",),
        cloud_extra_days=("2026-11-22",),
        local_rows=28,
        cloud_rows=26,
    )
    assert not result.in_sync


def test_unpriced_days_match_a_zero_or_null_cloud_cost() -> None:
    rec = Reconciler("2026-11-24", "2026-11-24")
    for cloud_cost in (None, "0", "0.00"):
        cloud = reply(200, {"days": [{"date": "2026-11-24", "rows": 2, "cost_usd": cloud_cost}]})
        result = rec.receive_totals(cloud, {"2026-11-24": (2, None)})
        assert isinstance(result, ReconcileResult) and result.in_sync


@pytest.mark.parametrize(
    ("answer", "outcome_type"),
    [
        (reply(401, {"error": "invalid_token", "detail": "revoked"}), Unauthorised),
        (reply(429, {"error": "rate_limited"}, **{"Retry-After": "12"}), RetryLater),
        (Response(502), RetryLater),
        (TransportFailure("timeout"), RetryLater),
    ],
)
def test_reconcile_failures_are_outcomes(
    answer: Response | TransportFailure, outcome_type: type
) -> None:
    outcome = Reconciler("2026-11-24", "2026-11-24").receive_totals(answer, {})
    assert isinstance(outcome, outcome_type)
    if isinstance(answer, Response) and answer.status == 429:
        assert outcome == RetryLater("HTTP 429 rate_limited", 12.0)


def test_a_422_is_an_outcome_with_the_detail_not_an_exception() -> None:
    # The error rule (docs/sync.md): an error answer is an outcome, like whoami's and revoke's.
    answer = reply(422, {"error": "validation_error", "detail": "Field required: from_date"})
    outcome = Reconciler("2026-11-24", "2026-11-24").receive_totals(answer, {})
    assert outcome == CallFailed(422, "validation_error", "Field required: from_date")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"days": {}},
        {"days": [{"date": "24/11/2026", "rows": 1, "cost_usd": "1"}]},
        {"days": [{"date": "2026-11-24", "rows": -1, "cost_usd": "1"}]},
        {"days": [{"date": "2026-11-24", "rows": True, "cost_usd": "1"}]},
        {"days": [{"date": "2026-11-24", "rows": 1, "cost_usd": 1.5}]},
        {"days": [{"date": "2026-11-24", "rows": 1, "cost_usd": "NaN"}]},
        {"days": [{"date": "2026-11-24", "rows": 1, "cost_usd": "1"}] * 2},
    ],
)
def test_malformed_totals_are_remote_protocol_errors(body: object) -> None:
    with pytest.raises(RemoteProtocolError):
        Reconciler("2026-11-24", "2026-11-24").receive_totals(reply(200, body), {})


def test_bad_ranges_say_what_to_do() -> None:
    with pytest.raises(LocalProtocolError, match="swap"):
        Reconciler("2026-11-24", "2026-11-01")
    with pytest.raises(LocalProtocolError, match="at most"):
        Reconciler("2020-01-01", "2026-11-24")
    with pytest.raises(LocalProtocolError, match="positive"):
        Reconciler.last_days("2026-11-24", 0)
    with pytest.raises(LocalProtocolError, match="today"):
        Reconciler.last_days("yesterday")


day_strategy = st.integers(0, 9).map(lambda n: add_days("2026-11-15", n))
totals = st.dictionaries(
    day_strategy, st.tuples(st.integers(0, 50), st.integers(0, 500)), max_size=10
)


@given(local=totals, cloud=totals)
def test_every_day_lands_in_exactly_one_bucket(
    local: dict[str, tuple[int, int]], cloud: dict[str, tuple[int, int]]
) -> None:
    rec = Reconciler("2026-11-15", "2026-11-24")
    body = {
        "days": [
            {"date": d, "rows": r, "cost_usd": f"{c / 100:.2f}"} for d, (r, c) in cloud.items()
        ]
    }
    local_totals = {d: (r, f"{c / 100:.2f}") for d, (r, c) in local.items()}
    result = rec.receive_totals(reply(200, body), local_totals)
    assert isinstance(result, ReconcileResult)
    buckets = [result.days_to_resend, result.matching_days, result.cloud_extra_days]
    seen = [day for bucket in buckets for day in bucket]
    assert len(seen) == len(set(seen))
    for bucket in buckets:
        assert list(bucket) == sorted(bucket)
    for day in set(local) | set(cloud):
        lr, lc = local.get(day, (0, 0))
        cr, cc = cloud.get(day, (0, 0))
        if cr > lr:
            assert day in result.cloud_extra_days
        elif cr < lr or cc != lc:
            assert day in result.days_to_resend
        elif lr:
            assert day in result.matching_days
        else:
            assert day not in seen


# -- revoke and whoami ----------------------------------------------------------------


def test_revoke_request_and_outcomes() -> None:
    request = revoke_request(TOKEN)
    assert (request.method, request.target) == ("POST", "/v1/pairing/revoke")
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert receive_revoke(reply(200, {"revoked": True})) == Revoked()
    assert receive_revoke(reply(401, {"error": "invalid_token"})) == Revoked(already=True)
    assert isinstance(receive_revoke(Response(503)), RetryLater)
    assert isinstance(receive_revoke(reply(429, {"error": "rate_limited"})), RetryLater)
    assert isinstance(receive_revoke(TransportFailure("connect", "refused")), RetryLater)
    assert receive_revoke(reply(404, {"error": "not_found", "detail": "no route"})) == CallFailed(
        404, "not_found", "no route"
    )


def test_whoami() -> None:
    request = whoami_request(TOKEN)
    assert (request.method, request.target) == ("GET", "/v1/whoami")
    body = {
        "workspace_id": "ws_1",
        "workspace_slug": "acme-co",
        "workspace_name": "Acme Co",
        "machine_id": "m",
        "hostname": "vk.local",
        "extra": "ignored",
    }
    assert parse_whoami(reply(200, body)) == WhoAmI("ws_1", "acme-co", "Acme Co", "m", "vk.local")
    assert isinstance(parse_whoami(reply(401, {"error": "invalid_token"})), Unauthorised)
    assert isinstance(parse_whoami(TransportFailure("timeout")), RetryLater)
    with pytest.raises(RemoteProtocolError, match="hostname"):
        parse_whoami(reply(200, {k: v for k, v in body.items() if k != "hostname"}))
    with pytest.raises(RemoteProtocolError):
        parse_whoami(Response(200, (), b"not json"))


# -- retention ------------------------------------------------------------------------


def test_days_the_workspace_retention_deleted_are_not_resent() -> None:
    rec = Reconciler("2026-10-01", "2026-11-29")
    local = {"2026-10-05": (3, "0.3"), "2026-10-29": (1, "0.1"), "2026-10-30": (2, "0.2"), "2026-11-29": (1, "0.1")}
    cloud = {"days": [{"date": "2026-10-30", "rows": 1, "cost_usd": "0.1"},
                      {"date": "2026-11-29", "rows": 1, "cost_usd": "0.1"}],
             "retention_days": 30, "retained_from": "2026-10-30"}
    result = rec.receive_totals(reply(200, cloud), local)
    assert isinstance(result, ReconcileResult)
    assert result.days_to_resend == ("2026-10-30",) and result.matching_days == ("2026-11-29",)
    assert result.retained_from == "2026-10-30" and result.local_rows == 3
    # an older server (no retention in the answer) still gets every day
    del cloud["retained_from"]
    assert rec.receive_totals(reply(200, cloud), local).days_to_resend == ("2026-10-05", "2026-10-29", "2026-10-30")
    for bad in (30, "30 days", "2026-13-01"):
        with pytest.raises(RemoteProtocolError, match="retained_from"):
            rec.receive_totals(reply(200, {**cloud, "retained_from": bad}), local)


def test_whoami_carries_the_retention() -> None:
    who = {"workspace_id": "w", "workspace_slug": "acme", "workspace_name": "Acme", "machine_id": "m",
           "hostname": "h"}
    assert parse_whoami(reply(200, who)) == WhoAmI("w", "acme", "Acme", "m", "h", None)
    assert parse_whoami(reply(200, {**who, "retention_days": 30})).retention_days == 30
    for bad in (0, True, "30", 1.5):
        with pytest.raises(RemoteProtocolError, match="retention_days"):
            parse_whoami(reply(200, {**who, "retention_days": bad}))
