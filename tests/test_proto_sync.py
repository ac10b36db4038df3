"""SyncSession and the backoff policy, with time moved by hand (no sleeps)."""

from __future__ import annotations

import gzip
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import zstandard
from hypothesis import event as tally
from hypothesis import given, settings
from hypothesis import strategies as st

from hm_proto import (
    MAX_IN_FLIGHT,
    RECONCILE_EVERY,
    RECONCILE_RETRY,
    BackoffPolicy,
    BatchAccepted,
    BatchBuilder,
    BatchQuarantined,
    BatchRetryScheduled,
    BatchSplit,
    CallFailed,
    Idle,
    LocalProtocolError,
    NeedRows,
    Paused,
    ReconcileResult,
    RemoteProtocolError,
    Response,
    RetryLater,
    SendBatch,
    StateChanged,
    SyncEvent,
    SyncSession,
    SyncState,
    TransportFailure,
    Wait,
    parse_retry_after,
    state_without_driver,
)
from hm_proto._retry import MAX_RETRY_AFTER, uniform
from hm_proto._sync import DEGRADED_WINDOW, FLUSH_INTERVAL, SERVER_ERROR_ATTEMPTS

TOKEN = "hm_sync_test"
Rows = list[tuple[str, bytes]]


def entropy_from(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def make_rows(n: int, start: int = 0) -> Rows:
    out = []
    for i in range(start, start + n):
        row_id = str(uuid.UUID(int=i + 1, version=4))
        out.append((row_id, json.dumps({"id": row_id, "n": i}, separators=(",", ":")).encode()))
    return out


def ok(accepted: int, duplicates: int = 0) -> Response:
    return Response(200, (), json.dumps({"accepted": accepted, "duplicates": duplicates}).encode())


def error(status: int, code: str = "err", headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps({"error": code, "detail": f"detail of {status}"}).encode()
    return Response(status, headers, body)


def session(**kwargs: object) -> SyncSession:
    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("builder", BatchBuilder(None, max_rows=8))
    return SyncSession(entropy_from(0), **kwargs)  # type: ignore[arg-type]


def send(s: SyncSession, rows: Rows, now: float) -> SendBatch:
    events = s.start_batch(rows, now)
    sends = [e for e in events if isinstance(e, SendBatch)]
    assert len(sends) == 1
    return sends[0]


def only(events: list[SyncEvent], kind: type) -> list[SyncEvent]:
    return [e for e in events if isinstance(e, kind)]


# -- backoff -------------------------------------------------------------------


@settings(max_examples=300)
@given(
    attempt=st.integers(min_value=0, max_value=200),
    raw=st.binary(min_size=7, max_size=7),
    base=st.floats(min_value=0.01, max_value=10),
    cap=st.floats(min_value=0.1, max_value=3600),
)
def test_backoff_is_within_zero_and_the_capped_exponential(
    attempt: int, raw: bytes, base: float, cap: float
) -> None:
    policy = BackoffPolicy(base=base, cap=cap)
    delay = policy.delay(attempt, lambda n: raw)
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt, 60))
    assert delay <= cap


@settings(max_examples=300)
@given(
    attempt=st.integers(min_value=0, max_value=50),
    raw=st.binary(min_size=7, max_size=7),
    retry_after=st.integers(min_value=0, max_value=100_000),
)
def test_backoff_honours_retry_after(attempt: int, raw: bytes, retry_after: int) -> None:
    delay = BackoffPolicy().delay(attempt, lambda n: raw, float(retry_after))
    assert delay >= min(retry_after, MAX_RETRY_AFTER)


def test_backoff_grows_then_caps_and_uses_the_full_interval() -> None:
    policy = BackoffPolicy(base=1.0, cap=60.0)
    assert [policy.ceiling(a) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.ceiling(10_000) == 60.0
    assert policy.delay(3, lambda n: b"\x00" * n) == 0.0
    assert 7.99 < policy.delay(3, lambda n: b"\xff" * n) < 8.0
    with pytest.raises(LocalProtocolError):
        policy.ceiling(-1)


def test_uniform_spans_the_interval() -> None:
    assert uniform(lambda n: b"\x00" * n, 2.0, 3.0) == 2.0
    assert uniform(lambda n: b"\xff" * n, 0.0, 1.0) < 1.0  # 53 bits: never 1.0 itself
    assert uniform(lambda n: b"\xff" * n, 2.0, 3.0) <= 3.0  # rounding may reach high


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),  # HTTP-date: no clock here, treated as absent
        ("٣", None),  # a non-ASCII digit is not a delay
        ("99999999999", MAX_RETRY_AFTER),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


# -- states and commands -------------------------------------------------------


def test_without_a_token_nothing_flows() -> None:
    s = SyncSession(entropy_from(0))
    assert s.state is SyncState.NOT_CONFIGURED
    assert s.snapshot().to_dict()["state"] == "NOT-CONFIGURED"
    assert isinstance(s.next_action(0.0), Idle)
    assert s.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        s.start_batch(make_rows(1), 0.0)
    with pytest.raises(LocalProtocolError, match="cloud connect"):
        s.resume(0.0)
    with pytest.raises(LocalProtocolError):
        s.pause()
    with pytest.raises(LocalProtocolError):
        s.sync_now(0.0)


def test_configure_then_send_then_ack_then_rest() -> None:
    s = session()
    assert s.state is SyncState.ACTIVE
    assert s.next_action(0.0) == NeedRows(8)
    rows = make_rows(3)
    sent = send(s, rows, 1.0)
    assert sent.request.header("Authorization") == f"Bearer {TOKEN}"
    assert sent.batch.row_ids == tuple(i for i, _ in rows)
    assert isinstance(s.next_action(1.0), Idle)  # awaiting the answer
    assert s.snapshot().in_flight
    with pytest.raises(LocalProtocolError, match="one request at a time"):
        s.start_batch(rows, 1.0)
    events = s.receive(ok(3), 2.0)
    assert events == [BatchAccepted(sent.batch.batch_id, sent.batch.row_ids, 3, 0)]
    # fewer rows than asked for: the store is drained, gather rows for a while
    assert s.next_action(2.0) == Wait(2.0 + FLUSH_INTERVAL)
    assert s.next_deadline() == 2.0 + FLUSH_INTERVAL
    assert s.next_action(2.0 + FLUSH_INTERVAL) == NeedRows(8)
    status = s.snapshot()
    assert status.last_sync_at == 2.0 and status.last_error is None and not status.in_flight


def test_a_full_batch_is_followed_at_once_by_the_next() -> None:
    s = session()
    send(s, make_rows(8), 0.0)
    s.receive(ok(8), 0.5)
    assert s.next_action(0.5) == NeedRows(8)


def test_rows_beyond_the_batch_mean_more_is_waiting() -> None:
    s = session()
    sent = send(s, make_rows(20), 0.0)  # the driver read too many: only 8 go
    assert len(sent.batch) == 8
    s.receive(ok(8), 0.1)
    assert s.next_action(0.1) == NeedRows(8)


def test_nothing_to_send_rests_and_a_full_backlog_or_sync_now_wakes_it() -> None:
    s = session()
    s.nothing_to_send(0.0)
    assert s.next_action(1.0) == Wait(FLUSH_INTERVAL)
    s.note_backlog(3, 1.0)  # a few rows: keep gathering
    assert s.next_action(1.0) == Wait(FLUSH_INTERVAL)
    s.note_backlog(8, 1.5)  # a full batch: go
    assert s.next_action(1.5) == NeedRows(8)
    s.nothing_to_send(2.0)
    s.sync_now(2.1)
    assert s.next_action(2.1) == NeedRows(8)
    assert s.start_batch([], 2.2) == []  # same as nothing_to_send
    assert isinstance(s.next_action(2.2), Wait)


# -- pipelining (max_in_flight > 1) ----------------------------------------------


def test_a_streaming_backlog_keeps_up_to_max_in_flight_batches_out() -> None:
    s = session(max_in_flight=2)
    rows = make_rows(40)
    first = send(s, rows[:8], 0.0)
    assert s.next_action(0.0) == NeedRows(8)  # a full batch: the next may go before its answer
    second = send(s, rows[8:16], 0.1)
    assert isinstance(s.next_action(0.1), Idle) and s.in_flight_count == 2
    with pytest.raises(LocalProtocolError, match="2 batch"):
        s.start_batch(rows[16:24], 0.1)
    assert s.in_flight is first.batch  # answers come back in the order sent
    assert only(s.receive(ok(8), 0.2), BatchAccepted)
    assert s.next_action(0.2) == NeedRows(8)
    third = send(s, rows[16:19], 0.3)  # the last rows: nothing may follow it
    assert isinstance(s.next_action(0.3), Idle)
    assert only(s.receive(ok(8), 0.4), BatchAccepted)[0] == BatchAccepted(second.batch.batch_id,
                                                                           second.batch.row_ids, 8, 0)
    assert isinstance(s.next_action(0.4), Idle)
    s.receive(ok(3), 0.5)
    assert s.next_action(0.5) == Wait(0.5 + FLUSH_INTERVAL)
    assert third.batch.row_ids == tuple(i for i, _ in rows[16:19])


def test_nothing_past_the_batches_in_flight_rests_after_their_answers() -> None:
    s = session(max_in_flight=2)
    send(s, make_rows(8), 0.0)
    s.nothing_to_send(0.1)  # the driver found no row past the ones in flight
    assert isinstance(s.next_action(0.1), Idle)
    s.receive(ok(8), 0.2)
    assert s.next_action(0.2) == Wait(0.2 + FLUSH_INTERVAL)


def test_a_failure_ends_the_stream_and_the_answers_still_out_only_ack() -> None:
    s = session(max_in_flight=3)
    rows = make_rows(24)
    send(s, rows[:8], 0.0)
    second = send(s, rows[8:16], 0.0)
    third = send(s, rows[16:24], 0.0)
    events = s.receive(error(503, "unavailable", (("Retry-After", "30"),)), 1.0)
    assert only(events, BatchRetryScheduled)
    assert isinstance(s.next_action(1.0), Idle)  # nothing new while answers are out
    assert s.receive(ok(8), 1.1) == [BatchAccepted(second.batch.batch_id, second.batch.row_ids, 8, 0)]
    assert s.receive(error(429, "rate_limited", (("Retry-After", "60"),)), 1.2) == []  # just unsynced
    assert third.batch.row_ids[0] == rows[16][0]
    status = s.snapshot()
    assert status.consecutive_failures == 1 and not status.in_flight
    assert s.next_action(1.2) == Wait(61.2)  # the later Retry-After holds too
    s.sync_now(30.0)
    assert s.next_action(30.0) == Wait(61.2)
    assert s.next_action(61.2) == NeedRows(8)


def test_an_ack_still_out_does_not_undo_a_split() -> None:
    s = session(max_in_flight=2)
    rows = make_rows(16)
    send(s, rows[:8], 0.0)
    send(s, rows[8:], 0.0)
    assert only(s.receive(error(400), 1.0), BatchSplit)
    assert only(s.receive(ok(8), 1.1), BatchAccepted)
    assert s.next_action(1.1) == NeedRows(4)  # still bisecting the refused batch


def test_a_401_with_batches_out_pauses_and_their_200s_still_count() -> None:
    s = session(max_in_flight=2)
    send(s, make_rows(8), 0.0)
    second = send(s, make_rows(8, start=8), 0.0)
    assert only(s.receive(error(401, "invalid_token"), 1.0), Paused)
    assert s.state is SyncState.PAUSED
    assert s.receive(ok(8), 1.1) == [BatchAccepted(second.batch.batch_id, second.batch.row_ids, 8, 0)]
    assert isinstance(s.next_action(1.1), Idle)


def test_max_in_flight_is_bounded() -> None:
    for bad in (0, MAX_IN_FLIGHT + 1):
        with pytest.raises(LocalProtocolError, match="max_in_flight"):
            session(max_in_flight=bad)


def test_receive_without_a_batch_in_flight_is_illegal() -> None:
    with pytest.raises(LocalProtocolError):
        session().receive(ok(1), 0.0)


def test_401_pauses_unauthorised_until_resume_or_configure() -> None:
    s = session()
    send(s, make_rows(2), 0.0)
    events = s.receive(error(401, "invalid_token"), 1.0)
    assert events == [Paused("paused_unauthorised")]
    assert (s.state, s.paused_reason) == (SyncState.PAUSED, "paused_unauthorised")
    assert isinstance(s.next_action(100.0), Idle)
    assert s.snapshot().last_error is not None and "401" in s.snapshot().last_error  # type: ignore[operator]
    with pytest.raises(LocalProtocolError, match="resume"):
        s.sync_now(2.0)
    s.configure("hm_sync_new")
    assert (s.state, s.paused_reason, s.token) == (SyncState.ACTIVE, None, "hm_sync_new")
    assert s.next_action(2.0) == NeedRows(8)


def test_user_pause_resume_and_an_answer_in_flight_still_counts() -> None:
    s = session()
    sent = send(s, make_rows(2), 0.0)
    s.pause()
    assert (s.state, s.paused_reason) == (SyncState.PAUSED, "user")
    events = s.receive(ok(2), 1.0)  # the rows were stored: they must be marked synced
    assert only(events, BatchAccepted) == [
        BatchAccepted(sent.batch.batch_id, sent.batch.row_ids, 2, 0)
    ]
    assert isinstance(s.next_action(10.0), Idle)
    s.resume(10.0)
    assert s.state is SyncState.ACTIVE and s.paused_reason is None
    assert s.next_action(10.0) == NeedRows(8)


def test_disable_forgets_the_token() -> None:
    s = session()
    s.disable()
    assert (s.state, s.token) == (SyncState.NOT_CONFIGURED, None)
    assert isinstance(s.next_action(0.0), Idle)


def test_a_restart_restores_a_persisted_pause_history_and_counters() -> None:
    s = session(
        paused_reason="paused_unauthorised", last_sync_at=5.0, last_reconcile_at=3.0,
        quarantined_rows=4,
    )
    status = s.snapshot()
    assert (status.state, status.paused_reason) == (SyncState.PAUSED, "paused_unauthorised")
    assert (status.last_sync_at, status.last_reconcile_at) == (5.0, 3.0)
    assert status.quarantined_rows == 4  # not reset by a restart
    with pytest.raises(LocalProtocolError):
        session(paused_reason="bored")


def test_resume_after_a_401_is_allowed_and_the_server_decides_again() -> None:
    s = session(paused_reason="paused_unauthorised")
    s.resume(0.0)
    assert s.state is SyncState.ACTIVE and s.paused_reason is None
    assert isinstance(s.next_action(0.0), NeedRows)
    sent = send(s, make_rows(1), 0.0)
    assert sent.batch.row_ids
    events = s.receive(error(401, "unauthorized"), 1.0)
    assert Paused("paused_unauthorised") in events and s.state is SyncState.PAUSED


# -- reconcile schedule -----------------------------------------------------------


def totals(days: dict[str, int]) -> Response:
    body = {"days": [{"date": d, "rows": n, "cost_usd": None} for d, n in days.items()]}
    return Response(200, (), json.dumps(body).encode())


def test_reconcile_is_due_at_pairing_then_daily_and_on_demand() -> None:
    s = session()
    assert s.reconcile_due(0.0)  # at pairing
    send_totals = s.start_reconcile("2026-11-29", 0.0)
    assert (send_totals.from_date, send_totals.to_date) == ("2026-10-31", "2026-11-29")
    assert send_totals.request.target.startswith("/v1/requests/totals?")
    assert not s.reconcile_due(0.0)  # one at a time
    with pytest.raises(LocalProtocolError, match="already in flight"):
        s.start_reconcile("2026-11-29", 0.0)
    outcome = s.receive_reconcile(totals({"2026-11-29": 2}), {"2026-11-29": (2, None)}, 10.0)
    assert isinstance(outcome, ReconcileResult) and outcome.in_sync
    assert s.snapshot().last_reconcile_at == 10.0
    assert s.reconcile_at == 10.0 + RECONCILE_EVERY
    assert not s.reconcile_due(10.0 + RECONCILE_EVERY - 1)
    assert s.reconcile_due(10.0 + RECONCILE_EVERY)
    s.request_reconcile()  # cloud sync --reconcile
    assert s.reconcile_due(11.0)


def test_a_restart_keeps_the_daily_rhythm_and_a_pause_stops_reconciles() -> None:
    s = session(last_reconcile_at=-100.0)
    assert not s.reconcile_due(0.0) and s.reconcile_due(RECONCILE_EVERY - 100.0)
    s.pause()
    assert not s.reconcile_due(RECONCILE_EVERY)
    with pytest.raises(LocalProtocolError):
        s.start_reconcile("2026-11-29", RECONCILE_EVERY)


def test_reconcile_failures_retry_later_and_days_to_resend_poke_the_upload_loop() -> None:
    s = session()
    s.nothing_to_send(0.0)  # resting for the flush interval
    s.start_reconcile("2026-11-29", 0.0)
    late = error(503, "unavailable", (("Retry-After", "900"),))
    assert isinstance(s.receive_reconcile(late, {}, 0.0), RetryLater)
    assert s.reconcile_at == 900.0
    s.start_reconcile("2026-11-29", 900.0)
    refused = s.receive_reconcile(error(404, "not_found"), {}, 900.0)
    assert isinstance(refused, CallFailed) and s.reconcile_at == 900.0 + RECONCILE_RETRY
    assert "reconcile: 404" in (s.snapshot().last_error or "")
    s.start_reconcile("2026-11-29", 2000.0)
    with pytest.raises(RemoteProtocolError):
        s.receive_reconcile(Response(200, (), b"[]"), {}, 2000.0)
    assert s.reconcile_at == 2000.0 + RECONCILE_RETRY and not s.reconcile_due(2000.0)
    s.nothing_to_send(2000.0)
    s.start_reconcile("2026-11-29", 2001.0)
    short = s.receive_reconcile(totals({"2026-11-29": 1}), {"2026-11-29": (3, None)}, 2001.0)
    assert isinstance(short, ReconcileResult) and short.days_to_resend == ("2026-11-29",)
    assert isinstance(s.next_action(2001.0), NeedRows)  # no flush rest before re-sending


def test_the_status_of_a_sync_nobody_drives() -> None:
    assert state_without_driver(False, None) is SyncState.NOT_CONFIGURED
    assert state_without_driver(True, "user") is SyncState.PAUSED
    assert state_without_driver(True, None) is SyncState.DEGRADED


# -- retries -------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_retryable_statuses_back_off_and_keep_the_rows(status: int) -> None:
    s = session(backoff=BackoffPolicy(base=2.0, cap=60.0))
    sent = send(s, make_rows(3), 10.0)
    events = s.receive(error(status), 11.0)
    assert len(events) == 1 and isinstance(events[0], BatchRetryScheduled)
    retry = events[0]
    assert retry.batch_id == sent.batch.batch_id and retry.attempt == 1
    assert 11.0 <= retry.at <= 11.0 + 2.0
    assert s.next_deadline() == retry.at
    assert s.snapshot().consecutive_failures == 1
    assert s.snapshot().next_attempt_at == retry.at
    if retry.at > 11.0:
        assert s.next_action(11.0) == Wait(retry.at)
        with pytest.raises(LocalProtocolError):
            s.start_batch(make_rows(3), 11.0)
    assert s.next_action(retry.at) == NeedRows(8)


def test_transport_failures_back_off_with_growing_ceilings() -> None:
    s = session(backoff=BackoffPolicy(base=1.0, cap=8.0))
    now = 0.0
    for attempt in range(6):
        send(s, make_rows(1), now)
        (retry,) = only(
            s.receive(TransportFailure("timeout", "read timed out"), now), BatchRetryScheduled
        )
        assert isinstance(retry, BatchRetryScheduled)
        assert now <= retry.at <= now + min(8.0, 2.0**attempt)
        assert "timeout" in retry.reason
        now = retry.at
    assert s.snapshot().consecutive_failures == 6
    send(s, make_rows(1), now)
    s.receive(ok(1), now)
    assert s.snapshot().consecutive_failures == 0


def test_429_retry_after_is_a_floor_even_for_sync_now() -> None:
    s = session(backoff=BackoffPolicy(base=0.001, cap=0.001))
    send(s, make_rows(1), 0.0)
    (retry,) = s.receive(error(429, "rate_limited", (("Retry-After", "30"),)), 0.0)
    assert isinstance(retry, BatchRetryScheduled) and retry.at >= 30.0
    s.sync_now(10.0)  # a user's `cloud sync` does not override the server's Retry-After
    assert s.next_action(10.0) == Wait(retry.at)
    s.sync_now(30.0)
    assert s.next_action(30.0) == NeedRows(8)


def test_sync_now_skips_a_plain_backoff() -> None:
    s = session(backoff=BackoffPolicy(base=100.0, cap=100.0))
    send(s, make_rows(1), 0.0)
    s.receive(error(503), 0.0)
    s.sync_now(0.5)
    assert s.next_action(0.5) == NeedRows(8)


def test_a_200_that_is_not_a_batch_answer_is_not_an_ack() -> None:
    s = session()
    send(s, make_rows(2), 0.0)
    events = s.receive(Response(200, (), b"<html>hotel wifi</html>"), 1.0)
    assert not only(events, BatchAccepted) and only(events, BatchRetryScheduled)
    send(s, make_rows(2), 100.0)
    events = s.receive(Response(200, (), b'{"accepted": true}'), 100.0)
    assert not only(events, BatchAccepted)


def test_other_4xx_are_retried_never_quarantined() -> None:
    s = session()
    now = 0.0
    for _ in range(10):
        send(s, make_rows(1), now)
        events = s.receive(error(404, "not_found"), now)
        assert [type(e) for e in events if not isinstance(e, StateChanged)] == [BatchRetryScheduled]
        now = s.next_deadline() or now
    assert s.snapshot().quarantined_rows == 0


# -- split and quarantine ------------------------------------------------------


def test_413_halves_and_the_lower_limit_sticks() -> None:
    s = session()
    sent = send(s, make_rows(8), 0.0)
    events = s.receive(error(413, "too_large"), 0.0)
    assert events == [BatchSplit(sent.batch.batch_id, 8, 4, 413)]
    assert s.next_action(0.0) == NeedRows(4)  # no backoff: the server answered
    send(s, make_rows(4), 0.0)
    s.receive(ok(4), 0.0)
    assert s.next_action(0.0) == NeedRows(4)


def test_413_on_a_single_row_quarantines_it() -> None:
    s = session()
    sent = send(s, make_rows(1), 0.0)
    events = s.receive(error(413, "too_large"), 0.0)
    assert len(events) == 1 and isinstance(events[0], BatchQuarantined)
    assert events[0].row_ids == sent.batch.row_ids and events[0].status == 413
    assert s.snapshot().quarantined_rows == 1


def test_a_row_too_large_for_any_batch_is_quarantined_locally() -> None:
    s = session(builder=BatchBuilder(None, max_rows=8, max_bytes=200))
    rows = [("huge", b'"' + b"x" * 300 + b'"'), *make_rows(2)]
    events = s.start_batch(rows, 0.0)
    assert isinstance(events[0], BatchQuarantined)
    assert events[0].row_ids == ("huge",) and events[0].status is None
    assert isinstance(events[1], SendBatch) and len(events[1].batch) == 2
    s2 = session(builder=BatchBuilder(None, max_rows=8, max_bytes=200))
    assert only(s2.start_batch(rows[:1], 0.0), SendBatch) == []
    assert s2.next_action(0.0) == NeedRows(8)  # nothing in flight: read on


def run_until_drained(
    s: SyncSession, store: Rows, answer: Callable[[SendBatch], Response], now: float = 0.0
) -> tuple[set[str], set[str], int]:
    """Drive ``s`` over ``store`` until it is empty; (synced, quarantined, requests)."""
    synced: set[str] = set()
    quarantined: set[str] = set()
    requests = 0
    while True:
        action = s.next_action(now)
        if isinstance(action, Wait):
            now = action.until
            continue
        assert isinstance(action, NeedRows)
        rows = [r for r in store if r[0] not in synced | quarantined][: action.limit]
        if not rows:
            return synced, quarantined, requests
        for event in s.start_batch(rows, now):
            if isinstance(event, SendBatch):
                requests += 1
                for ev in s.receive(answer(event), now):
                    if isinstance(ev, BatchAccepted):
                        synced |= set(ev.row_ids)
                    if isinstance(ev, BatchQuarantined):
                        quarantined |= set(ev.row_ids)


@pytest.mark.parametrize("status", [400, 422])
def test_a_rejected_batch_is_bisected_down_to_the_bad_row(status: int) -> None:
    store = make_rows(40)
    bad = store[13][0]

    def answer(sent: SendBatch) -> Response:
        return error(status) if bad in sent.batch.row_ids else ok(len(sent.batch))

    synced, quarantined, requests = run_until_drained(session(), store, answer)
    assert quarantined == {bad}
    assert synced == {i for i, _ in store} - {bad}
    assert requests < 25


def test_a_persistent_500_is_retried_a_bounded_number_of_times_then_isolated() -> None:
    store = make_rows(8)
    poison = store[5][0]

    def answer(sent: SendBatch) -> Response:
        return error(500, "internal") if poison in sent.batch.row_ids else ok(len(sent.batch))

    synced, quarantined, requests = run_until_drained(session(), store, answer)
    assert quarantined == {poison}
    assert synced == {i for i, _ in store} - {poison}
    # 3 levels of bisection (8 -> 4 -> 2 -> 1) and the lone row, each SERVER_ERROR_ATTEMPTS
    assert requests <= 4 * SERVER_ERROR_ATTEMPTS + 8


def test_a_transient_500_is_just_retried() -> None:
    s = session()
    send(s, make_rows(8), 0.0)
    events = s.receive(error(500), 0.0)
    assert only(events, BatchRetryScheduled) and not only(events, BatchSplit)
    send(s, make_rows(8), s.next_deadline() or 0.0)
    assert only(s.receive(ok(8), 100.0), BatchAccepted)


# -- DEGRADED ------------------------------------------------------------------


def test_consecutive_failures_with_a_backlog_degrade_and_an_ack_heals() -> None:
    s = session()
    s.note_backlog(5, 0.0)
    now = 0.0
    changes: list[SyncEvent] = []
    for _ in range(3):
        send(s, make_rows(5), now)
        changes += only(s.receive(error(503), now), StateChanged)
        now = s.next_deadline() or now
    assert changes == [StateChanged(SyncState.DEGRADED)]
    assert s.snapshot().state is SyncState.DEGRADED
    send(s, make_rows(5), now)
    assert only(s.receive(ok(5), now), StateChanged) == [StateChanged(SyncState.ACTIVE)]


def test_failures_degrade_even_if_the_driver_never_reported_a_backlog() -> None:
    s = session()
    for _ in range(3):
        send(s, make_rows(2), s.next_deadline() or 0.0)
        s.receive(TransportFailure("connect"), 0.0)
    assert s.state is SyncState.DEGRADED
    assert s.snapshot().unsynced_rows == 2


def test_a_backlog_that_grows_over_the_window_degrades_until_it_shrinks() -> None:
    s = session()  # max_rows 8: a backlog above 8 is more than one batch
    assert s.note_backlog(100, 0.0) == []
    assert s.note_backlog(150, DEGRADED_WINDOW / 2) == []  # not a full window yet
    assert s.note_backlog(200, DEGRADED_WINDOW) == [StateChanged(SyncState.DEGRADED)]
    assert s.note_backlog(220, DEGRADED_WINDOW + 10) == []
    # the backlog now drains below what it was a window ago
    assert s.note_backlog(140, 1.5 * DEGRADED_WINDOW + 1) == [StateChanged(SyncState.ACTIVE)]
    # a small backlog never degrades, however it grows
    t = 2000.0
    for n in range(0, 8):
        assert s.note_backlog(n, t + n * DEGRADED_WINDOW) == []


def test_pause_hides_degraded_and_resume_re_evaluates() -> None:
    s = session()
    s.note_backlog(100, 0.0)
    s.note_backlog(200, DEGRADED_WINDOW)
    assert s.state is SyncState.DEGRADED
    s.pause()
    assert s.note_backlog(300, 2 * DEGRADED_WINDOW) == []
    assert s.state is SyncState.PAUSED
    s.resume(2 * DEGRADED_WINDOW)
    assert s.state is SyncState.DEGRADED


def test_snapshot_has_every_field_status_json_needs() -> None:
    keys = set(session().snapshot().to_dict())
    assert keys >= {
        "state", "paused_reason", "last_sync_at", "unsynced_rows", "last_error",
        "last_reconcile_at", "consecutive_failures", "next_attempt_at", "quarantined_rows",
    }  # fmt: skip


# -- the property: nothing lost, nothing acked without a 200 -------------------


def event_seen(label: str) -> None:
    """Tally what an example exercised (pytest --hypothesis-show-statistics)."""
    tally(label)


@dataclass
class SimServer:
    """The backend's batch endpoint: de-duplicates by row id, accepts whole batches."""

    stored: set[str] = field(default_factory=set)
    answered_200: dict[str, frozenset[str]] = field(default_factory=dict)
    accepted_total: int = 0

    def store(self, sent: SendBatch) -> Response:
        encoding = sent.request.header("Content-Encoding")
        raw = sent.request.body
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "zstd":
            raw = zstandard.ZstdDecompressor().decompress(raw)
        body = json.loads(raw)
        assert body["batch_id"] == sent.batch.batch_id
        ids = [row["id"] for row in body["rows"]]
        assert tuple(ids) == sent.batch.row_ids
        assert 1 <= len(ids) <= 1000 and len(raw) <= 4 * 1024 * 1024
        new = set(ids) - self.stored
        self.stored |= new
        self.accepted_total += len(new)
        return ok(len(new), len(ids) - len(new))


ANSWERS = st.one_of(
    st.sampled_from(
        [
            ("ok",),
            ("status", 401),
            ("status", 408),
            ("status", 413),
            ("status", 500),
            ("status", 501),
            ("status", 502),
            ("status", 503),
            ("status", 504),
            ("status", 400),
            ("status", 422),
            ("transport_before",),  # the request never reached the server
            ("transport_after",),  # the server stored it; the answer was lost
            ("crash_in_flight", False),  # the daemon died before the server got it
            ("crash_in_flight", True),  # ...or after the server stored it
            ("crash_after_ack",),  # BatchAccepted seen, died before the commit
            ("junk_200",),
        ]
    ),
    st.tuples(st.just("429"), st.one_of(st.none(), st.integers(min_value=0, max_value=120))),
)


def answer_for(step: tuple[object, ...], sent: SendBatch, server: SimServer) -> Response | TransportFailure:
    """What the scripted ``step`` makes of a sent batch (crashes are the driver's)."""
    kind = step[0]
    if kind in ("ok", "crash_after_ack"):
        answer = server.store(sent)
        server.answered_200[sent.batch.batch_id] = frozenset(sent.batch.row_ids)
        return answer
    if kind == "transport_before":
        return TransportFailure("connect", "refused")
    if kind == "transport_after":
        server.store(sent)
        return TransportFailure("broken", "reset by peer")
    if kind == "junk_200":
        return Response(200, (), b"<html>captive portal</html>")
    if kind == "429":
        return error(429, "rate_limited", () if step[1] is None else (("Retry-After", str(step[1])),))
    status = step[1]
    assert isinstance(status, int)
    return error(status)


@settings(max_examples=400, deadline=None)
@given(
    answers=st.lists(ANSWERS, max_size=60),
    arrivals=st.lists(st.integers(min_value=0, max_value=10), min_size=2, max_size=15),
    encoding=st.sampled_from([None, "gzip", "zstd"]),
    max_rows=st.integers(min_value=1, max_value=8),
    max_in_flight=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_random_answers_and_crashes_never_lose_or_falsely_ack_a_row(
    answers: list[tuple[object, ...]],
    arrivals: list[int],
    encoding: str | None,
    max_rows: int,
    max_in_flight: int,
    seed: int,
) -> None:
    """The driver keeps up to ``max_in_flight`` batches out, reading on past the rows in
    flight, and feeds the answers back in the order it sent the batches."""
    entropy = entropy_from(seed)
    server = SimServer()
    store: Rows = []  # oldest first
    synced: set[str] = set()
    quarantined: set[str] = set()
    reported: set[str] = set()
    pending_arrivals = list(arrivals)
    script = list(answers)
    flights: list[SendBatch] = []  # sent, not answered yet: oldest first

    def fresh_session() -> SyncSession:
        # A restart: only the store (rows, synced, quarantined) and the token survive.
        return SyncSession(
            entropy,
            token=TOKEN,
            builder=BatchBuilder(encoding, max_rows=max_rows),  # type: ignore[arg-type]
            quarantined_rows=len(quarantined),
            max_in_flight=max_in_flight,
        )

    s = fresh_session()
    now = 0.0
    for _step in range(5_000):
        if pending_arrivals:
            store += make_rows(pending_arrivals.pop(0), start=len(store))
        if not flights:
            s.note_backlog(len([r for r in store if r[0] not in synced | quarantined]), now)
        action = s.next_action(now)
        if isinstance(action, NeedRows):
            out = {row_id for sent in flights for row_id in sent.batch.row_ids}
            rows = [r for r in store if r[0] not in synced | quarantined | out][: action.limit]
            if not rows:
                if not pending_arrivals and not flights:
                    break
                s.nothing_to_send(now)
                continue
            sends = only(s.start_batch(rows, now), SendBatch)
            assert len(sends) == 1  # no row here is too large
            sent = sends[0]
            assert isinstance(sent, SendBatch)
            assert len(sent.batch) <= max_rows
            assert not set(sent.batch.row_ids) & out  # never a row that is already out
            flights.append(sent)
            assert len(flights) == s.in_flight_count <= max_in_flight
            event_seen(f"{len(flights)} in flight")
            continue
        if not flights:
            if isinstance(action, Idle):
                assert s.state is SyncState.PAUSED and s.paused_reason == "paused_unauthorised"
                s.configure(TOKEN)  # the user pairs again
                continue
            assert isinstance(action, Wait) and action.until >= now
            now = action.until
            continue
        # The oldest batch's answer comes in.
        sent = flights.pop(0)
        assert s.in_flight is sent.batch
        step = script.pop(0) if script else ("ok",)
        kind = step[0]
        event_seen(f"answer {kind} {step[1] if kind == 'status' else ''}".strip())
        if kind == "crash_in_flight":
            if step[1]:
                server.store(sent)
            flights.clear()
            s = fresh_session()
            continue
        answer = answer_for(step, sent, server)
        before = now
        events = s.receive(answer, now)
        if flights and not only(events, BatchAccepted):
            event_seen("an answer that is not an ack, with batches still in flight")
        for event in events:
            if isinstance(event, BatchAccepted):
                # never an ack without a 200 for exactly this batch
                assert server.answered_200.get(event.batch_id) == frozenset(event.row_ids)
                assert event.batch_id == sent.batch.batch_id
                if kind == "crash_after_ack":
                    flights.clear()
                    s = fresh_session()  # died before the store commit
                    break
                synced |= set(event.row_ids)
            elif isinstance(event, BatchQuarantined):
                quarantined |= set(event.row_ids)
                event_seen("quarantined")
                reported |= set(event.row_ids)
            elif isinstance(event, BatchRetryScheduled):
                assert event.at >= before
                if kind == "429" and step[1] is not None:
                    assert event.at >= before + float(step[1])  # type: ignore[arg-type]
        now += 0.01
    else:
        pytest.fail("the sync loop did not drain the store")

    event_seen(f"rows {min(len(store) // 10 * 10, 40)}+")
    everything = {row_id for row_id, _ in store}
    assert not flights
    assert synced | quarantined == everything  # nothing lost
    assert not synced & quarantined
    assert quarantined == reported  # every quarantined row was reported
    assert s.snapshot().quarantined_rows == len(quarantined)  # and status counts them
    assert synced <= server.stored  # nothing marked synced that the server lacks
    assert server.stored - synced <= quarantined  # the server holds exactly the acked rows...
    assert server.accepted_total == len(server.stored)  # ...each once
