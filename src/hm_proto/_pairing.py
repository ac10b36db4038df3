"""The daemon side of pairing (api.md "Pairing", shaped on RFC 8628).

A :class:`PairingClient` asks for a code (``start_request`` /
``receive_start``), then long-polls until the user approves or denies in the
browser, the code expires, or the caller cancels::

    pairing = PairingClient(machine_id, hostname, os_name, agent_version, None)
    event = pairing.receive_start(send(pairing.start_request()), now())
    while not pairing.is_done:
        request = pairing.next_poll(now())
        if request is None:          # not time yet (or it just expired)
            sleep_until(pairing.next_deadline())
            continue
        event = pairing.receive_poll(send(request, timeout=pairing.poll_timeout), now())

``now`` is any monotonic clock in seconds. Every state change goes through
the ``_TRANSITIONS`` table; a move the table does not allow raises
LocalProtocolError, a malformed answer RemoteProtocolError.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import TypeVar

from ._codes import Entropy, format_user_code, looks_like_token, normalize_user_code
from ._errors import LocalProtocolError, RemoteProtocolError
from ._http import JSON_HEADERS, Request, Response, TransportFailure, json_body
from ._outcomes import CallFailed, RetryLater, Unauthorised, classify_failure, describe
from ._retry import BackoffPolicy, is_retryable, is_retryable_status, retry_after

START_PATH = "/v1/pairing/start"
POLL_PATH = "/v1/pairing/poll"
CANCEL_PATH = "/v1/pairing/cancel"

SLOW_DOWN_STEP = 5.0  # RFC 8628 §3.5: add 5 s for this and every later poll
DEFAULT_INTERVAL = 5.0  # RFC 8628 §3.2: when the server sends no interval
DEFAULT_WAIT = 20  # api.md: the backend holds a poll up to `wait` seconds
POLL_TIMEOUT_MARGIN = 10.0  # network slack on top of the server's hold time
MAX_BACKOFF = 60.0  # never wait longer than this between attempts after failures
#: Ask for a code this many times in a row while the cloud does not answer, then give up.
DEFAULT_START_ATTEMPTS = 5
#: ``PairingError.error`` when every start attempt failed without an answer.
UNREACHABLE = "unreachable"
START_BACKOFF_BASE = 1.0

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class PairingState(enum.Enum):
    IDLE = "IDLE"  # nothing in flight; start_request() is the next move
    STARTING = "STARTING"  # the start request is in flight
    WAITING = "WAITING"  # a code is shown; the next poll is not due yet
    POLLING = "POLLING"  # a poll is in flight
    APPROVED = "APPROVED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


TERMINAL_STATES = frozenset(
    {
        PairingState.APPROVED,
        PairingState.DENIED,
        PairingState.EXPIRED,
        PairingState.CANCELLED,
        PairingState.FAILED,
    }
)


class _Move(enum.Enum):
    SEND_START = "send start"
    START_OK = "start answered"
    START_RETRY = "start failed, retryable"
    START_ERROR = "start refused"
    SEND_POLL = "send poll"
    PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    POLL_RETRY = "poll failed, retryable"
    APPROVE = "approved"
    DENY = "access_denied"
    EXPIRE = "expired"
    POLL_ERROR = "poll refused"
    BAD_ANSWER = "malformed answer"
    CANCEL = "cancel"


_S = PairingState
_M = _Move
_TRANSITIONS: dict[PairingState, dict[_Move, PairingState]] = {
    _S.IDLE: {_M.SEND_START: _S.STARTING, _M.CANCEL: _S.CANCELLED},
    _S.STARTING: {
        _M.START_OK: _S.WAITING,
        _M.START_RETRY: _S.IDLE,
        _M.START_ERROR: _S.FAILED,
        _M.BAD_ANSWER: _S.FAILED,
        _M.CANCEL: _S.CANCELLED,
    },
    _S.WAITING: {_M.SEND_POLL: _S.POLLING, _M.EXPIRE: _S.EXPIRED, _M.CANCEL: _S.CANCELLED},
    _S.POLLING: {
        _M.PENDING: _S.WAITING,
        _M.SLOW_DOWN: _S.WAITING,
        _M.POLL_RETRY: _S.WAITING,
        _M.APPROVE: _S.APPROVED,
        _M.DENY: _S.DENIED,
        _M.EXPIRE: _S.EXPIRED,
        _M.POLL_ERROR: _S.FAILED,
        _M.BAD_ANSWER: _S.FAILED,
        _M.CANCEL: _S.CANCELLED,
    },
    _S.APPROVED: {},
    _S.DENIED: {},
    _S.EXPIRED: {},
    _S.CANCELLED: {},
    _S.FAILED: {},
}


# -- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeIssued:
    """Show ``user_code`` and ``verification_uri_complete`` to the user."""

    user_code: str  # display form, WXJ4-9KLM
    verification_uri: str
    verification_uri_complete: str
    expires_at: float  # on the caller's clock
    interval: float


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """No usable answer (transport failure, 408, 429, 5xx); try again at ``retry_at``."""

    reason: str
    retry_at: float


@dataclass(frozen=True, slots=True)
class PairingError:
    """The server refused for good (e.g. 404: wrong --base-url). Terminal."""

    status: int
    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class Pending:
    """Not approved yet; the next poll is due at ``next_poll_at``."""

    next_poll_at: float


@dataclass(frozen=True, slots=True)
class SlowDown:
    """We polled too fast: ``interval`` is now 5 s longer, for good."""

    interval: float
    next_poll_at: float


@dataclass(frozen=True, slots=True)
class Approved:
    """The minted token; yielded once. Write it to the 0600 credentials file."""

    token: str
    workspace_id: str
    workspace_slug: str
    workspace_name: str
    machine_id: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return (
            f"Approved(token='hm_sync_…', workspace_id={self.workspace_id!r}, "
            f"workspace_slug={self.workspace_slug!r}, machine_id={self.machine_id!r})"
        )


@dataclass(frozen=True, slots=True)
class Denied:
    """The user pressed Deny in the browser."""


@dataclass(frozen=True, slots=True)
class Expired:
    """The code expired: ``by_server`` (expired_token) or by our own clock."""

    by_server: bool


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The caller cancelled (Ctrl-C)."""


StartEvent = CodeIssued | RetryScheduled | PairingError
PollEvent = Pending | SlowDown | RetryScheduled | Approved | Denied | Expired | PairingError
PairingOutcome = Approved | Denied | Expired | Cancelled | PairingError
_OutcomeT = TypeVar("_OutcomeT", Approved, Denied, Expired, Cancelled, PairingError)


def _require_str(data: dict[str, object], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RemoteProtocolError(f"{what}: the server sent no usable {key!r}")
    return value


def _positive_number(data: dict[str, object], key: str, default: float | None, what: str) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RemoteProtocolError(f"{what}: {key!r} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise RemoteProtocolError(f"{what}: {key!r} must be finite")
    return float(value)


class PairingClient:
    """Asks for a pairing code and polls for the token; see the module docstring."""

    def __init__(
        self,
        machine_id: str,
        hostname: str,
        os: str,
        agent_version: str,
        workspace: str | None = None,
        *,
        wait: int = DEFAULT_WAIT,
        entropy: Entropy | None = None,
        start_attempts: int = DEFAULT_START_ATTEMPTS,
    ) -> None:
        """``entropy`` (``secrets.token_bytes``) jitters the backoff after failures.

        Without it every retry waits the top of its backoff interval: fine
        for one process, but a fleet restarting together would retry in step.
        After ``start_attempts`` start requests in a row get no usable answer,
        ``receive_start`` gives up: ``PairingError(0, UNREACHABLE, reason)``.
        """
        if isinstance(start_attempts, bool) or not isinstance(start_attempts, int) or not 1 <= start_attempts <= 100:
            raise LocalProtocolError(f"start_attempts must be 1..100, got {start_attempts!r}")
        if not isinstance(machine_id, str) or not _UUID_RE.fullmatch(machine_id):
            raise LocalProtocolError(
                f"machine_id must be a UUID, got {machine_id!r}: check ~/.halton-meter/machine.json"
            )
        if workspace is not None and not _SLUG_RE.fullmatch(workspace):
            raise LocalProtocolError(
                f"--workspace must be a workspace slug (lowercase letters, digits, dashes), got {workspace!r}"
            )
        if isinstance(wait, bool) or not isinstance(wait, int) or not 0 <= wait <= 60:
            raise LocalProtocolError(
                f"wait must be a whole number of seconds in 0..60, got {wait!r}"
            )
        self.machine_id = machine_id
        self.hostname = hostname
        self.os = os
        self.agent_version = agent_version
        self.workspace = workspace
        self.wait = wait
        self.start_attempts = start_attempts
        self._entropy = entropy
        self.state = PairingState.IDLE
        self.interval = DEFAULT_INTERVAL
        self.code: CodeIssued | None = None
        self.outcome: PairingOutcome | None = None
        self._device_code = ""
        self._expires_at = math.inf
        self._next_attempt_at: float | None = None
        self._failures = 0  # consecutive failed attempts; reset by any real answer

    # -- bookkeeping ------------------------------------------------------------

    def _move(self, move: _Move) -> None:
        try:
            self.state = _TRANSITIONS[self.state][move]
        except KeyError:
            raise LocalProtocolError(
                f"cannot {move.value} while pairing is {self.state.value}"
            ) from None

    def _finish(self, move: _Move, outcome: _OutcomeT) -> _OutcomeT:
        self._move(move)
        self.outcome = outcome
        self._next_attempt_at = None
        return outcome

    def _bad_answer(self, message: str) -> RemoteProtocolError:
        self._move(_Move.BAD_ANSWER)
        self.outcome = PairingError(0, "malformed_answer", message)
        self._next_attempt_at = None
        return RemoteProtocolError(message)

    def _backoff(self, base: float, answer: Response | TransportFailure) -> float:
        """Delay before the next attempt after ``self._failures`` failures in a row.

        Jittered exponential backoff from ``base`` (never less) up to
        MAX_BACKOFF, or the server's Retry-After if that is longer.
        """
        policy = BackoffPolicy(base=base, cap=max(base, MAX_BACKOFF), floor=base)
        attempt = max(self._failures - 1, 0)
        if self._entropy is None:
            return max(policy.ceiling(attempt), retry_after(answer) or 0.0)
        return policy.delay(attempt, self._entropy, retry_after(answer))

    @property
    def is_done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def expires_at(self) -> float:
        """When the code expires on the caller's clock (inf before a code is issued)."""
        return self._expires_at

    @property
    def poll_timeout(self) -> float:
        """The timeout a driver must give each poll: the server may hold it ``wait`` s."""
        return self.wait + POLL_TIMEOUT_MARGIN

    def next_deadline(self) -> float | None:
        """When to call ``next_poll`` (or ``start_request`` after a failure) again.

        None when nothing is scheduled: before the first start, while a
        request is in flight, and once pairing is over.
        """
        if self.state is PairingState.IDLE:
            return self._next_attempt_at
        if self.state is PairingState.WAITING:
            assert self._next_attempt_at is not None
            return min(self._next_attempt_at, self._expires_at)
        return None

    # -- start ------------------------------------------------------------------

    def start_request(self) -> Request:
        """``POST /v1/pairing/start``. After a RetryScheduled, call again at ``next_deadline()``."""
        self._move(_Move.SEND_START)
        body = {
            "machine_id": self.machine_id,
            "hostname": self.hostname,
            "os": self.os,
            "agent_version": self.agent_version,
            "workspace": self.workspace,
        }
        return Request("POST", START_PATH, JSON_HEADERS, json_body(body))

    def receive_start(self, answer: Response | TransportFailure, now: float) -> StartEvent:
        if self.state is not PairingState.STARTING:
            raise LocalProtocolError(
                f"receive_start() needs a start request in flight; pairing is {self.state.value}"
            )
        if isinstance(answer, TransportFailure) or is_retryable_status(answer.status):
            self._failures += 1
            if self._failures >= self.start_attempts:
                return self._finish(_Move.START_ERROR, PairingError(0, UNREACHABLE, describe(answer)))
            self._move(_Move.START_RETRY)
            self._next_attempt_at = now + self._backoff(START_BACKOFF_BASE, answer)
            return RetryScheduled(describe(answer), self._next_attempt_at)
        if answer.status != 200:
            error = PairingError(answer.status, answer.error_code() or "", answer.error_detail())
            return self._finish(_Move.START_ERROR, error)
        what = "pairing start"
        try:
            data = answer.json()
        except RemoteProtocolError as exc:
            raise self._bad_answer(str(exc)) from None
        if not isinstance(data, dict):
            raise self._bad_answer(f"{what}: the answer is not a JSON object")
        try:
            device_code = _require_str(data, "device_code", what)
            raw_code = _require_str(data, "user_code", what)
            uri = _require_str(data, "verification_uri", what)
            uri_complete = data.get("verification_uri_complete", uri)
            if not isinstance(uri_complete, str):
                raise RemoteProtocolError(f"{what}: 'verification_uri_complete' is not a string")
            expires_in = _positive_number(data, "expires_in", None, what)
            interval = _positive_number(data, "interval", DEFAULT_INTERVAL, what)
        except RemoteProtocolError as exc:
            raise self._bad_answer(str(exc)) from None
        self._move(_Move.START_OK)
        self._failures = 0
        self._device_code = device_code
        self._expires_at = now + expires_in
        self.interval = interval
        self._next_attempt_at = now  # the first poll may go at once: it is a long-poll
        # Show a code from another alphabet as the server wrote it: the user types what they see.
        shown = format_user_code(raw_code) if normalize_user_code(raw_code) else raw_code
        self.code = CodeIssued(shown, uri, uri_complete, self._expires_at, interval)
        return self.code

    # -- poll -------------------------------------------------------------------

    def check_expiry(self, now: float) -> Expired | None:
        """Expire by our own clock if the code's lifetime has passed (timer hook)."""
        if self.state is PairingState.WAITING and now >= self._expires_at:
            return self._finish(_Move.EXPIRE, Expired(by_server=False))
        return None

    def next_poll(self, now: float) -> Request | None:
        """The next ``POST /v1/pairing/poll``, or None if it is not due yet.

        None also when the code has just expired by the local clock: check
        ``is_done``/``outcome``. Calling it after pairing is over raises.
        """
        if self.state is not PairingState.WAITING:
            if self.state in (PairingState.IDLE, PairingState.STARTING):
                raise LocalProtocolError("cannot poll before the pairing code was issued")
            if self.state is PairingState.POLLING:
                raise LocalProtocolError("a poll is already in flight; feed its answer first")
            raise LocalProtocolError(f"pairing is over ({self.state.value}); no more polls")
        if self.check_expiry(now) is not None:
            return None
        assert self._next_attempt_at is not None
        if now < self._next_attempt_at:
            return None
        self._move(_Move.SEND_POLL)
        body: dict[str, object] = {"device_code": self._device_code}
        if self.wait != DEFAULT_WAIT:
            body["wait"] = self.wait
        return Request("POST", POLL_PATH, JSON_HEADERS, json_body(body))

    def receive_poll(self, answer: Response | TransportFailure, now: float) -> PollEvent:
        if self.state is not PairingState.POLLING:
            raise LocalProtocolError(
                f"receive_poll() needs a poll in flight; pairing is {self.state.value}"
            )
        if isinstance(answer, Response) and answer.status == 200:
            return self._approved(answer)
        code = answer.error_code() if isinstance(answer, Response) else None
        if isinstance(answer, Response) and answer.status == 400 and code is not None:
            if code == "access_denied":
                return self._finish(_Move.DENY, Denied())
            if code == "expired_token":
                return self._finish(_Move.EXPIRE, Expired(by_server=True))
            if code == "authorization_pending":
                self._failures = 0
                return self._wait_again(_Move.PENDING, now, self.interval, answer)
            if code == "slow_down":
                self._failures = 0
                if now < self._expires_at:  # an expired code has no later polls to slow
                    self.interval += SLOW_DOWN_STEP
                return self._wait_again(_Move.SLOW_DOWN, now, self.interval, answer)
        if is_retryable(answer):
            self._failures += 1
            return self._wait_again(
                _Move.POLL_RETRY, now, self._backoff(self.interval, answer), answer
            )
        assert isinstance(answer, Response)
        error = PairingError(answer.status, code or "", answer.error_detail())
        return self._finish(_Move.POLL_ERROR, error)

    def _wait_again(
        self, move: _Move, now: float, delay: float, answer: Response | TransportFailure
    ) -> PollEvent:
        if now >= self._expires_at:
            return self._finish(_Move.EXPIRE, Expired(by_server=False))
        self._move(move)
        self._next_attempt_at = now + delay
        if move is _Move.PENDING:
            return Pending(self._next_attempt_at)
        if move is _Move.SLOW_DOWN:
            return SlowDown(self.interval, self._next_attempt_at)
        return RetryScheduled(describe(answer), self._next_attempt_at)

    def _approved(self, answer: Response) -> Approved:
        what = "pairing approval"
        try:
            data = answer.json()
            if not isinstance(data, dict):
                raise RemoteProtocolError(f"{what}: the answer is not a JSON object")
            token = _require_str(data, "token", what)
            if not looks_like_token(token):
                raise RemoteProtocolError(
                    f"{what}: the server sent a token that is not a valid hm_sync_ token"
                )
            approved = Approved(
                token=token,
                workspace_id=_require_str(data, "workspace_id", what),
                workspace_slug=_require_str(data, "workspace_slug", what),
                workspace_name=_require_str(data, "workspace_name", what),
                machine_id=_require_str(data, "machine_id", what),
            )
            if approved.machine_id.lower() != self.machine_id.lower():
                raise RemoteProtocolError(
                    f"{what}: the token is for machine {approved.machine_id}, not this one"
                )
        except RemoteProtocolError as exc:
            raise self._bad_answer(str(exc)) from None
        self._finish(_Move.APPROVE, approved)
        return approved

    # -- cancel -----------------------------------------------------------------

    def cancel(self) -> PairingState:
        """Stop for good: no more polls. A no-op once pairing is over."""
        if not self.is_done:
            self._finish(_Move.CANCEL, Cancelled())
        return self.state

    def cancel_request(self) -> Request | None:
        """After :meth:`cancel`: the ``POST /v1/pairing/cancel`` that tells the backend.

        None when there is nothing to tell: pairing was not cancelled, or no
        code was ever issued (nobody saw one to approve). After this request
        the backend refuses to approve the code (the page says it was
        cancelled) and revokes a token it minted for it that never reached
        us. Send it once; read the answer with :func:`receive_cancel`.
        """
        if self.state is not PairingState.CANCELLED or not self._device_code:
            return None
        return Request("POST", CANCEL_PATH, JSON_HEADERS, json_body({"device_code": self._device_code}))


@dataclass(frozen=True, slots=True)
class CancelAcknowledged:
    """The backend will not let the code be approved. ``known``: it still knew the code."""

    known: bool


CancelOutcome = CancelAcknowledged | RetryLater | CallFailed


def receive_cancel(answer: Response | TransportFailure) -> CancelOutcome:
    """The backend's answer to :meth:`PairingClient.cancel_request`."""
    if isinstance(answer, Response) and answer.status == 200:
        data = answer.json()
        known = isinstance(data, dict) and data.get("cancelled") is True
        return CancelAcknowledged(known=known)
    outcome = classify_failure(answer)
    if isinstance(outcome, Unauthorised):  # no token is involved: a 401 is a refusal like any other
        return CallFailed(401, "unauthorised", outcome.detail)
    return outcome
