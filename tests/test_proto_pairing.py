"""PairingClient with hand-moved time: no sockets, no sleeps."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hm_proto import (
    MAX_RETRY_AFTER,
    UNREACHABLE,
    Approved,
    CodeIssued,
    Denied,
    Expired,
    LocalProtocolError,
    PairingClient,
    PairingError,
    PairingState,
    Pending,
    RemoteProtocolError,
    Response,
    RetryScheduled,
    SlowDown,
    TransportFailure,
)
from hm_proto.server import generate_token

MACHINE = "0b6f0c4e-6f3a-4d55-9a43-6c1f6b0f2a11"
TOKEN = generate_token(random.Random(7).randbytes)


def make_client(workspace: str | None = None, wait: int = 20) -> PairingClient:
    return PairingClient(MACHINE, "vk.local", "Linux", "0.2.1", workspace, wait=wait)


def reply(status: int, body: object, **headers: str) -> Response:
    return Response(status, tuple(headers.items()), json.dumps(body).encode())


def start_ok(expires_in: int = 600, interval: int = 5) -> Response:
    return reply(
        200,
        {
            "device_code": "dev-code-secret",
            "user_code": "wxj49kmn",
            "verification_uri": "https://app.example/connect",
            "verification_uri_complete": "https://app.example/connect?code=WXJ4-9KLM",
            "expires_in": expires_in,
            "interval": interval,
        },
    )


def pending() -> Response:
    return reply(400, {"error": "authorization_pending", "detail": ""})


def slow_down() -> Response:
    return reply(400, {"error": "slow_down", "detail": ""})


def approved(token: str = TOKEN, machine_id: str = MACHINE) -> Response:
    return reply(
        200,
        {
            "token": token,
            "workspace_id": "ws_1",
            "workspace_slug": "acme-co",
            "workspace_name": "Acme Co",
            "machine_id": machine_id,
        },
    )


def started(now: float = 0.0, **kwargs: int) -> PairingClient:
    client = make_client()
    client.start_request()
    event = client.receive_start(start_ok(**kwargs), now)
    assert isinstance(event, CodeIssued)
    return client


def test_start_request_carries_the_machine_and_issues_a_display_code() -> None:
    client = make_client(workspace="acme-co")
    request = client.start_request()
    assert (request.method, request.target) == ("POST", "/v1/pairing/start")
    assert request.header("content-type") == "application/json"
    assert json.loads(request.body) == {
        "machine_id": MACHINE,
        "hostname": "vk.local",
        "os": "Linux",
        "agent_version": "0.2.1",
        "workspace": "acme-co",
    }
    event = client.receive_start(start_ok(), 100.0)
    assert event == CodeIssued(
        "WXJ4-9KMN",
        "https://app.example/connect",
        "https://app.example/connect?code=WXJ4-9KLM",
        700.0,
        5.0,
    )
    assert client.state is PairingState.WAITING
    assert client.next_deadline() == 100.0  # the first long-poll may go at once


def test_full_flow_pending_then_approved_yields_the_token_once() -> None:
    client = started()
    request = client.next_poll(0.0)
    assert request is not None and request.target == "/v1/pairing/poll"
    assert json.loads(request.body) == {"device_code": "dev-code-secret"}
    assert client.poll_timeout == 30.0  # 20 s server hold + margin
    assert client.receive_poll(pending(), 20.0) == Pending(25.0)
    assert client.next_poll(24.9) is None
    assert client.next_deadline() == 25.0
    request = client.next_poll(25.0)
    assert request is not None
    event = client.receive_poll(approved(), 30.0)
    assert isinstance(event, Approved) and event.token == TOKEN
    assert event.workspace_slug == "acme-co" and event.machine_id == MACHINE
    assert "hm_sync_" not in repr(event).replace("hm_sync_…", "")
    assert client.outcome == event and client.is_done
    with pytest.raises(LocalProtocolError, match="over"):
        client.next_poll(31.0)
    with pytest.raises(LocalProtocolError):
        client.receive_poll(approved(), 31.0)


def test_wait_hint_goes_in_the_body_and_sets_the_poll_timeout() -> None:
    client = make_client(wait=5)
    client.start_request()
    client.receive_start(start_ok(), 0.0)
    request = client.next_poll(0.0)
    assert request is not None and json.loads(request.body)["wait"] == 5
    assert client.poll_timeout == 15.0


def test_slow_down_adds_five_seconds_to_this_and_every_later_poll() -> None:
    client = started()
    client.next_poll(0.0)
    assert client.receive_poll(slow_down(), 1.0) == SlowDown(10.0, 11.0)
    client.next_poll(11.0)
    assert client.receive_poll(pending(), 12.0) == Pending(22.0)
    client.next_poll(22.0)
    assert client.receive_poll(slow_down(), 22.0) == SlowDown(15.0, 37.0)


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (reply(400, {"error": "access_denied"}), Denied()),
        (reply(400, {"error": "expired_token"}), Expired(by_server=True)),
    ],
)
def test_denied_and_server_expiry_end_pairing(answer: Response, outcome: object) -> None:
    client = started()
    client.next_poll(0.0)
    assert client.receive_poll(answer, 1.0) == outcome
    assert client.is_done and client.next_deadline() is None


def test_local_clock_expires_the_code_and_stops_polling() -> None:
    client = started(expires_in=600)
    client.next_poll(0.0)
    client.receive_poll(pending(), 20.0)
    assert client.next_deadline() == 25.0
    client.next_poll(25.0)
    client.receive_poll(TransportFailure("timeout"), 590.0)
    assert client.next_deadline() == 595.0
    client.next_poll(595.0)
    client.receive_poll(TransportFailure("timeout"), 595.0)
    assert client.next_deadline() == 600.0  # the backoff says 605: expiry comes first
    assert client.next_poll(600.0) is None
    assert client.outcome == Expired(by_server=False) and client.state is PairingState.EXPIRED
    with pytest.raises(LocalProtocolError):
        client.next_poll(601.0)


def test_a_pending_answer_after_expiry_is_an_expiry() -> None:
    client = started(expires_in=60)
    client.next_poll(0.0)
    assert client.receive_poll(pending(), 61.0) == Expired(by_server=False)


def test_transport_failures_back_off_and_honour_retry_after() -> None:
    client = started()
    client.next_poll(0.0)
    assert client.receive_poll(TransportFailure("connect", "refused"), 0.0) == RetryScheduled(
        "connect: refused", 5.0
    )
    client.next_poll(5.0)
    event = client.receive_poll(Response(503), 5.0)
    assert isinstance(event, RetryScheduled) and event.retry_at == 15.0  # doubled
    client.next_poll(15.0)
    event = client.receive_poll(
        reply(429, {"error": "rate_limited"}, **{"Retry-After": "90"}), 15.0
    )
    assert isinstance(event, RetryScheduled) and event.retry_at == 105.0
    client.next_poll(105.0)
    assert client.receive_poll(pending(), 106.0) == Pending(111.0)  # a real answer resets backoff


def test_backoff_is_capped() -> None:
    client = started(expires_in=10_000)
    now = 0.0
    for _ in range(12):
        assert client.next_poll(now) is not None
        event = client.receive_poll(TransportFailure("timeout"), now)
        assert isinstance(event, RetryScheduled)
        assert event.retry_at - now <= 60.0
        now = event.retry_at


def test_injected_entropy_jitters_the_backoff_between_the_interval_and_its_double() -> None:
    # The same BackoffPolicy as sync (hm_proto._retry), floored at the poll interval.
    waits = set()
    for seed in range(20):
        client = PairingClient(
            MACHINE, "vk.local", "Linux", "0.2.1", entropy=random.Random(seed).randbytes
        )
        client.start_request()
        client.receive_start(start_ok(), 0.0)
        for now in (0.0, 5.0):
            client.next_poll(now)
            event = client.receive_poll(TransportFailure("timeout"), now)
            assert isinstance(event, RetryScheduled)
        waits.add(event.retry_at - 5.0)  # the second failure in a row: in [5, 10)
    assert all(5.0 <= wait <= 10.0 for wait in waits) and len(waits) == 20


def test_pairing_and_sync_agree_on_what_is_retryable_and_clamp_retry_after() -> None:
    client = started(expires_in=10**6)
    client.next_poll(0.0)
    event = client.receive_poll(Response(500), 0.0)  # every 5xx, 500 included
    assert isinstance(event, RetryScheduled)
    client.next_poll(event.retry_at)
    event = client.receive_poll(
        reply(429, {"error": "rate_limited"}, **{"Retry-After": "99999999"}), 10.0
    )
    assert isinstance(event, RetryScheduled) and event.retry_at == 10.0 + MAX_RETRY_AFTER


def test_cancel_stops_every_request() -> None:
    client = started()
    client.next_poll(0.0)
    assert client.cancel() is PairingState.CANCELLED
    assert client.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        client.next_poll(100.0)
    with pytest.raises(LocalProtocolError):
        client.receive_poll(approved(), 1.0)
    assert client.cancel() is PairingState.CANCELLED  # idempotent


def test_illegal_moves_raise_local_protocol_errors() -> None:
    client = make_client()
    with pytest.raises(LocalProtocolError, match="before the pairing code"):
        client.next_poll(0.0)
    with pytest.raises(LocalProtocolError):
        client.receive_start(start_ok(), 0.0)
    client.start_request()
    with pytest.raises(LocalProtocolError):
        client.start_request()
    client.receive_start(start_ok(), 0.0)
    client.next_poll(0.0)
    with pytest.raises(LocalProtocolError, match="already in flight"):
        client.next_poll(1.0)


def test_bad_constructor_arguments_say_what_to_fix() -> None:
    with pytest.raises(LocalProtocolError, match="machine.json"):
        PairingClient("not-a-uuid", "h", "Linux", "0.2.1")
    with pytest.raises(LocalProtocolError, match="slug"):
        PairingClient(MACHINE, "h", "Linux", "0.2.1", "Acme Co")


def test_start_retryable_failures_go_back_to_idle_with_a_deadline() -> None:
    client = make_client()
    client.start_request()
    event = client.receive_start(TransportFailure("connect", "refused"), 10.0)
    assert event == RetryScheduled("connect: refused", 11.0)
    assert client.state is PairingState.IDLE and client.next_deadline() == 11.0
    client.start_request()
    event = client.receive_start(
        reply(429, {"error": "rate_limited"}, **{"Retry-After": "30"}), 11.0
    )
    assert isinstance(event, RetryScheduled) and event.retry_at == 41.0
    client.start_request()
    assert isinstance(client.receive_start(start_ok(), 41.0), CodeIssued)


def test_pairing_gives_up_after_start_attempts_failures_in_a_row() -> None:
    client = PairingClient(MACHINE, "vk.local", "Linux", "0.2.1", start_attempts=3)
    now = 0.0
    for _ in range(2):
        client.start_request()
        event = client.receive_start(TransportFailure("connect", "refused"), now)
        assert isinstance(event, RetryScheduled)
        now = event.retry_at
    client.start_request()
    event = client.receive_start(Response(503), now)
    assert event == PairingError(0, UNREACHABLE, "HTTP 503")
    assert client.is_done and client.state is PairingState.FAILED and client.outcome == event
    with pytest.raises(LocalProtocolError, match="start_attempts"):
        PairingClient(MACHINE, "vk.local", "Linux", "0.2.1", start_attempts=0)


def test_start_refused_is_terminal_with_the_server_detail() -> None:
    client = make_client()
    client.start_request()
    event = client.receive_start(reply(404, {"error": "not_found", "detail": "no such route"}), 0.0)
    assert event == PairingError(404, "not_found", "no such route")
    assert client.state is PairingState.FAILED and client.outcome == event


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        json.dumps({"user_code": "WXJ4-9KLM"}).encode(),
        json.dumps(
            {"device_code": "d", "user_code": "", "verification_uri": "u", "expires_in": 600}
        ).encode(),
        json.dumps(
            {"device_code": "d", "user_code": "WXJ49KMN", "verification_uri": "u", "expires_in": -1}
        ).encode(),
    ],
)
def test_malformed_start_answers_are_remote_protocol_errors(body: bytes) -> None:
    client = make_client()
    client.start_request()
    with pytest.raises(RemoteProtocolError):
        client.receive_start(Response(200, (), body), 0.0)
    assert client.state is PairingState.FAILED


@pytest.mark.parametrize(
    "answer",
    [
        approved(token="hm_sync_not-a-real-token"),
        approved(token=TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")),  # checksum broken
        approved(machine_id="11111111-1111-1111-1111-111111111111"),
        Response(200, (), b"{}"),
    ],
)
def test_a_malformed_approval_is_rejected(answer: Response) -> None:
    client = started()
    client.next_poll(0.0)
    with pytest.raises(RemoteProtocolError):
        client.receive_poll(answer, 1.0)
    assert client.state is PairingState.FAILED
    with pytest.raises(LocalProtocolError):
        client.next_poll(2.0)


def test_unknown_poll_errors_are_terminal() -> None:
    client = started()
    client.next_poll(0.0)
    event = client.receive_poll(reply(400, {"error": "invalid_request", "detail": "bad code"}), 1.0)
    assert event == PairingError(400, "invalid_request", "bad code")


# -- properties -------------------------------------------------------------------

ANSWERS = st.sampled_from(["pending", "slow_down", "connect", "timeout", "503", "429"])


def _answer(kind: str) -> Response | TransportFailure:
    return {
        "pending": pending,
        "slow_down": slow_down,
        "connect": lambda: TransportFailure("connect"),
        "timeout": lambda: TransportFailure("timeout"),
        "503": lambda: Response(503),
        "429": lambda: reply(429, {"error": "rate_limited"}, **{"Retry-After": "7"}),
    }[kind]()


@settings(max_examples=200, deadline=None)
@given(
    answers=st.lists(st.tuples(ANSWERS, st.floats(0, 40)), max_size=60),
    expires_in=st.integers(30, 900),
    cancel_at=st.one_of(st.none(), st.integers(0, 60)),
)
def test_polling_never_speeds_up_and_stops_at_expiry_or_cancel(
    answers: list[tuple[str, float]], expires_in: int, cancel_at: int | None
) -> None:
    client = started(expires_in=expires_in)
    now, interval, slow_downs = 0.0, client.interval, 0
    last_answer_at: float | None = None
    for step, (kind, latency) in enumerate(answers):
        if step == cancel_at:
            client.cancel()
        if client.is_done:
            with pytest.raises(LocalProtocolError):
                client.next_poll(now)
            break
        deadline = client.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        request = client.next_poll(now)
        if request is None:  # only at the expiry
            assert now >= expires_in and client.outcome == Expired(by_server=False)
            break
        assert now < expires_in, "polled after the code expired"
        if last_answer_at is not None:
            assert now - last_answer_at >= interval - 1e-9, "polled faster than the interval"
        now += latency
        event = client.receive_poll(_answer(kind), now)
        last_answer_at = now
        assert client.interval >= interval, "the interval went down"
        if isinstance(event, SlowDown):
            slow_downs += 1
            assert client.interval == interval + 5.0
        interval = client.interval
        assert interval == 5.0 + 5.0 * slow_downs
        if isinstance(event, Expired):
            assert now >= expires_in
    if client.is_done:
        with pytest.raises(LocalProtocolError):
            client.next_poll(now + 1000)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["pending", "approved", "slow_down", "timeout"]), max_size=20))
def test_the_token_is_yielded_at_most_once(kinds: list[str]) -> None:
    client = started(expires_in=10_000)
    now, tokens = 0.0, 0
    for kind in kinds:
        if client.is_done:
            with pytest.raises(LocalProtocolError):
                client.receive_poll(approved(), now)
            continue
        now = max(now, client.next_deadline() or now)
        assert client.next_poll(now) is not None
        answer = approved() if kind == "approved" else _answer(kind)
        if isinstance(client.receive_poll(answer, now), Approved):
            tokens += 1
    assert tokens <= 1
    assert tokens == ("approved" in kinds)


OPERATIONS = st.sampled_from(
    [
        "start",
        "start_ok",
        "start_503",
        "start_404",
        "poll",
        "pending",
        "slow_down",
        "approved",
        "denied",
        "timeout",
        "cancel",
        "tick",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPERATIONS, max_size=40))
def test_any_call_sequence_follows_the_table_or_raises_local_protocol_error(ops: list[str]) -> None:
    """Walk the transition table with arbitrary moves: nothing but LocalProtocolError escapes."""
    client = make_client()
    now = 0.0
    answers: dict[str, Response | TransportFailure] = {
        "start_ok": start_ok(expires_in=100),
        "start_503": Response(503),
        "start_404": reply(404, {"error": "not_found"}),
        "pending": pending(),
        "slow_down": slow_down(),
        "approved": approved(),
        "denied": reply(400, {"error": "access_denied"}),
        "timeout": TransportFailure("timeout"),
    }
    for op in ops:
        was_done = client.is_done
        try:
            if op == "start":
                client.start_request()
            elif op.startswith("start_"):
                client.receive_start(answers[op], now)
            elif op == "poll":
                client.next_poll(now)
            elif op == "cancel":
                client.cancel()
            elif op == "tick":
                now += 7.0
            else:
                client.receive_poll(answers[op], now)
        except LocalProtocolError:
            pass
        assert isinstance(client.state, PairingState)
        if was_done:
            assert client.is_done  # terminal states are terminal
        if client.is_done:
            assert client.outcome is not None and client.next_deadline() is None
