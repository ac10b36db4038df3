"""SyncSession: when to upload the next batch, and what an answer means.

The cloud worker's brain, sans-IO. The driver owns the store and the socket;
the session owns every decision. The loop (see docs/sync.md)::

    action = session.next_action(now)
    NeedRows(limit) -> rows = store.oldest_unsynced(limit)   # not quarantined
                       events = session.start_batch(rows, now)  (or nothing_to_send(now))
                       SendBatch(batch, request) among them -> send request
                       events = session.receive(response_or_TransportFailure, now)
    Wait(until)     -> sleep until `until` (or until new rows / a user command)
    Idle()          -> nothing to do until an input (resume, configure, ...)

Reconcile runs beside it, on the session's schedule (at pairing, every
``reconcile_every`` seconds after a success, ``RECONCILE_RETRY`` after a
failure, and at once after ``request_reconcile()``)::

    if session.reconcile_due(now):
        send = session.start_reconcile(today, now)      # today: the driver's UTC date
        local = store.totals_by_day(send.from_date, send.to_date)
        outcome = session.receive_reconcile(answer_to(send.request), local, now)
        ReconcileResult -> store.mark_unsynced(rows of outcome.days_to_resend)

Ack-then-commit: rows become synced in the store only when the driver sees
``BatchAccepted`` for them, which only a 200 with a batch answer produces. A
crash between send and ack re-sends the rows; the server de-duplicates by
row id, so nothing is lost and nothing is stored twice. The session keeps no
rows of its own: a retry, split or bisection re-reads the oldest unsynced rows.

Pipelining (``max_in_flight`` > 1): while a backlog streams (every batch so
far full and acknowledged), ``next_action`` asks for the next rows before the
batch in flight is answered; the driver reads on past the rows in flight and
feeds the answers back in the order it sent the batches. The first answer that
is not an ack ends the stream: it decides (backoff, split, pause) as with one
batch in flight, and the answers still out only ack or not — a 200 marks its
rows, anything else leaves them unsynced to be read again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, TypeGuard

from ._batch import Batch, BatchBuilder, EncodedRow, RowTooLarge
from ._codes import Entropy
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._http import Request, Response, TransportFailure
from ._outcomes import CallFailed, RetryLater, describe
from ._reconcile import DEFAULT_DAYS, DayTotal, ReconcileOutcome, Reconciler, ReconcileResult
from ._retry import RETRYABLE_STATUSES, BackoffPolicy, retry_after

# -- states -------------------------------------------------------------------


class SyncState(StrEnum):
    """What ``cloud status`` shows. The value is the displayed spelling."""

    ACTIVE = "ACTIVE"
    DEGRADED = "DEGRADED"
    PAUSED = "PAUSED"
    NOT_CONFIGURED = "NOT-CONFIGURED"


PAUSED_BY_USER = "user"
PAUSED_UNAUTHORISED = "paused_unauthorised"
PAUSED_REASONS = (PAUSED_BY_USER, PAUSED_UNAUTHORISED)

def state_without_driver(paired: bool, paused_reason: str | None) -> SyncState:
    """The status of a sync nobody drives (the daemon is down): what the stored state tells.

    NOT-CONFIGURED when not paired, PAUSED with a stored pause, else DEGRADED:
    rows accumulate and nothing uploads them.
    """
    if not paired:
        return SyncState.NOT_CONFIGURED
    if paused_reason is not None:
        return SyncState.PAUSED
    return SyncState.DEGRADED


class _Trigger(Enum):
    CONFIGURE = "configure"  # a token arrived (cloud connect, or restart with one)
    DISABLE = "disable"  # cloud.enabled = false, or disconnect
    PAUSE = "pause"  # cloud pause
    RESUME = "resume"  # cloud resume
    UNAUTHORISED = "unauthorised"  # the server answered 401
    STRAINED = "strained"  # the DEGRADED measure is met
    HEALTHY = "healthy"  # the DEGRADED measure is not met


_A, _D, _P, _N = SyncState.ACTIVE, SyncState.DEGRADED, SyncState.PAUSED, SyncState.NOT_CONFIGURED
_T = _Trigger

# (state, trigger) -> next state. A missing pair is an illegal move.
_STATE_TABLE: dict[SyncState, dict[_Trigger, SyncState]] = {
    _N: {_T.CONFIGURE: _A, _T.DISABLE: _N, _T.UNAUTHORISED: _N, _T.STRAINED: _N, _T.HEALTHY: _N},
    _A: {
        _T.CONFIGURE: _A, _T.DISABLE: _N, _T.PAUSE: _P, _T.RESUME: _A,
        _T.UNAUTHORISED: _P, _T.STRAINED: _D, _T.HEALTHY: _A,
    },
    _D: {
        _T.CONFIGURE: _A, _T.DISABLE: _N, _T.PAUSE: _P, _T.RESUME: _D,
        _T.UNAUTHORISED: _P, _T.STRAINED: _D, _T.HEALTHY: _A,
    },
    _P: {
        _T.CONFIGURE: _A, _T.DISABLE: _N, _T.PAUSE: _P, _T.RESUME: _A,
        _T.UNAUTHORISED: _P, _T.STRAINED: _P, _T.HEALTHY: _P,
    },
}  # fmt: skip

_RUNNING = (SyncState.ACTIVE, SyncState.DEGRADED)


class _Phase(Enum):
    """Where the upload loop is, independent of what status shows."""

    READY = "ready"  # may send now
    IN_FLIGHT = "in_flight"  # one request sent, its answer not yet received
    BACKOFF = "backoff"  # waiting before a retry
    RESTING = "resting"  # the store was drained: wait to gather rows


class _Step(Enum):
    SEND = "send"
    NOTHING = "nothing"  # the store had no unsynced row
    MORE = "more"  # answered; more rows wait (or a split/quarantine to follow)
    DRAINED = "drained"  # answered 200 and the store is drained
    FAILED = "failed"  # a retryable failure: back off
    DUE = "due"  # the wait is over
    POKE = "poke"  # send now: cloud sync, or a full batch of rows arrived
    RESET = "reset"  # a new token: forget any wait


_R, _F, _B, _S = _Phase.READY, _Phase.IN_FLIGHT, _Phase.BACKOFF, _Phase.RESTING
_PHASE_TABLE: dict[_Phase, dict[_Step, _Phase]] = {
    _R: {_Step.SEND: _F, _Step.NOTHING: _S, _Step.POKE: _R, _Step.RESET: _R},
    _F: {_Step.MORE: _R, _Step.DRAINED: _S, _Step.FAILED: _B},
    _B: {_Step.DUE: _R, _Step.POKE: _R, _Step.RESET: _R},
    _S: {_Step.DUE: _R, _Step.POKE: _R, _Step.RESET: _R},
}

# -- policy constants (docs/sync.md explains each) ----------------------------

REJECTED_STATUSES = frozenset({400, 422})
#: Other 5xx (500, 501, 505, ...) are retried this many times in a row, then
#: treated like a rejection: the batch is bisected to find a poison row.
SERVER_ERROR_ATTEMPTS = 5
#: Seconds to wait after the store ran dry, so rows gather into one batch.
FLUSH_INTERVAL = 5.0
#: DEGRADED measure: the window over which backlog growth is judged...
DEGRADED_WINDOW = 300.0
#: ...and the count of consecutive failed attempts that degrade on their own.
DEGRADED_AFTER_FAILURES = 3
#: Backlog samples closer than this are coalesced (bounds memory).
_SAMPLE_SPACING = 1.0
#: Reconcile this often after a successful one (seconds)...
RECONCILE_EVERY = 24 * 3600.0
#: ...and this long after one that failed (or later, if Retry-After says so).
RECONCILE_RETRY = 600.0


# -- what the driver is asked to do -------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedRows:
    """Read up to ``limit`` oldest unsynced, unquarantined rows; call start_batch."""

    limit: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to send before ``until`` (the caller's clock)."""

    until: float


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to do until an input: paused, not configured, or awaiting an answer."""


Action = NeedRows | Wait | Idle

# -- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendBatch:
    """Send ``request`` (``batch`` is its parsed form), then call receive()."""

    batch: Batch
    request: Request


@dataclass(frozen=True, slots=True)
class BatchAccepted:
    """The server stored these rows (200). Now, and only now, mark them synced."""

    batch_id: str
    row_ids: tuple[str, ...]
    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class BatchSplit:
    """The batch was refused whole; its rows go again in smaller batches."""

    batch_id: str
    row_count: int
    next_row_limit: int
    status: int


@dataclass(frozen=True, slots=True)
class BatchQuarantined:
    """These rows will never be sent: record them so reads skip them, and report.

    ``status`` is the server's answer, or None when the row was refused
    locally (larger than a whole batch may be, so it was never sent).
    """

    batch_id: str | None
    row_ids: tuple[str, ...]
    status: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class BatchRetryScheduled:
    """The rows stay unsynced; the next attempt is not before ``at``."""

    batch_id: str
    at: float
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Paused:
    """Sending stopped (401: ``paused_unauthorised``). Persist it for restarts."""

    reason: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    """ACTIVE <-> DEGRADED moved on its own (the measure in docs/sync.md)."""

    state: SyncState


@dataclass(frozen=True, slots=True)
class SendReconcile:
    """Send ``request`` (GET totals) and compare with the local totals of these days."""

    request: Request
    from_date: str
    to_date: str


SyncEvent = (
    SendBatch
    | BatchAccepted
    | BatchSplit
    | BatchQuarantined
    | BatchRetryScheduled
    | Paused
    | StateChanged
)


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """Everything ``cloud status --json`` shows. Times are the caller's floats."""

    state: SyncState
    paused_reason: str | None
    last_sync_at: float | None
    unsynced_rows: int | None  # None until the driver called note_backlog
    last_error: str | None
    last_reconcile_at: float | None
    consecutive_failures: int
    next_attempt_at: float | None
    quarantined_rows: int
    in_flight: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "paused_reason": self.paused_reason,
            "last_sync_at": self.last_sync_at,
            "unsynced_rows": self.unsynced_rows,
            "last_error": self.last_error,
            "last_reconcile_at": self.last_reconcile_at,
            "consecutive_failures": self.consecutive_failures,
            "next_attempt_at": self.next_attempt_at,
            "quarantined_rows": self.quarantined_rows,
            "in_flight": self.in_flight,
        }


@dataclass(slots=True)
class _InFlight:
    batch: Batch
    more_waiting: bool  # the store held rows beyond this batch when it was built


#: The most batches a session lets be in flight at once (``max_in_flight``).
MAX_IN_FLIGHT = 4


def _batch_counts(answer: Response) -> tuple[int, int] | None:
    """``(accepted, duplicates)`` from a 200 body, or None if it is not one."""
    try:
        data = answer.json()
    except RemoteProtocolError:
        return None
    if not isinstance(data, dict):
        return None
    accepted, duplicates = data.get("accepted"), data.get("duplicates", 0)
    if _is_count(accepted) and _is_count(duplicates):
        return accepted, duplicates
    return None


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SyncSession:
    """Decides when to upload and interprets every answer.

    One request at a time unless ``max_in_flight`` > 1 (see Pipelining above).
    """

    def __init__(
        self,
        entropy: Entropy,
        *,
        token: str | None = None,
        paused_reason: str | None = None,
        builder: BatchBuilder | None = None,
        backoff: BackoffPolicy | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        last_sync_at: float | None = None,
        last_error: str | None = None,
        last_reconcile_at: float | None = None,
        quarantined_rows: int = 0,
        reconcile_every: float = RECONCILE_EVERY,
        reconcile_days: int = DEFAULT_DAYS,
        max_in_flight: int = 1,
    ) -> None:
        """Restore from what the driver stored: a token, a pause, the counters.

        Times are on the caller's monotonic clock (convert stored wall times
        by their age). Without ``last_reconcile_at`` the first reconcile is
        due at once. ``max_in_flight`` (1 to ``MAX_IN_FLIGHT``): how many
        batches may be on the wire at once while a backlog streams.
        """
        if paused_reason is not None and paused_reason not in PAUSED_REASONS:
            raise LocalProtocolError(f"paused_reason must be one of {PAUSED_REASONS}")
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT:
            raise LocalProtocolError(f"max_in_flight must be 1 to {MAX_IN_FLIGHT}")
        self._max_in_flight = max_in_flight
        self._entropy = entropy
        self._builder = builder if builder is not None else BatchBuilder()
        self._backoff = backoff if backoff is not None else BackoffPolicy()
        self._flush_interval = flush_interval
        self._token: str | None = None
        self._state = SyncState.NOT_CONFIGURED
        self._paused_reason: str | None = None
        self._phase = _Phase.READY
        self._wake_at: float | None = None
        self._retry_floor: float | None = None  # Retry-After: no attempt before this
        # Oldest first; answers are received in this order.
        self._flights: deque[_InFlight] = deque()
        # An answer of this stream was not an ack: the ones still out only ack or not.
        self._draining = False
        self._row_ceiling = self._builder.max_rows  # lowered for good by a 413
        self._row_limit = self._row_ceiling  # lowered while bisecting
        self._consecutive_failures = 0
        self._server_error_streak = 0
        self._last_sync_at = last_sync_at
        self._last_error = last_error
        self._last_reconcile_at = last_reconcile_at
        self._quarantined_rows = quarantined_rows
        self._unsynced_rows: int | None = None
        self._samples: deque[tuple[float, int]] = deque()
        if quarantined_rows < 0:
            raise LocalProtocolError("quarantined_rows cannot be negative")
        self._reconcile_every = reconcile_every
        self._reconcile_days = reconcile_days
        self._reconciler: Reconciler | None = None
        self._reconcile_at = -math.inf
        if token is not None:
            self.configure(token)
            if paused_reason is not None:
                self._move(_Trigger.PAUSE)
                self._paused_reason = paused_reason
        if last_reconcile_at is not None:
            self._reconcile_at = last_reconcile_at + reconcile_every

    # -- state plumbing ----------------------------------------------------------

    def _move(self, trigger: _Trigger) -> None:
        try:
            self._state = _STATE_TABLE[self._state][trigger]
        except KeyError:
            raise LocalProtocolError(
                f"cannot {trigger.value} while {self._state.value}"
                + (": run `halton-meter cloud connect` first" if self._state is _N else "")
            ) from None

    def _step(self, step: _Step) -> None:
        try:
            self._phase = _PHASE_TABLE[self._phase][step]
        except KeyError:
            raise LocalProtocolError(
                f"sync loop cannot {step.value} while {self._phase.value}"
                + (": one request at a time" if self._phase is _F else "")
            ) from None
        if self._phase in (_R, _F):
            self._wake_at = None

    def _tick(self, now: float) -> None:
        if self._phase in (_B, _S) and self._wake_at is not None and now >= self._wake_at:
            self._step(_Step.DUE)

    @property
    def state(self) -> SyncState:
        return self._state

    @property
    def paused_reason(self) -> str | None:
        return self._paused_reason

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def in_flight(self) -> Batch | None:
        """The oldest batch in flight: the one the next receive() is about."""
        return self._flights[0].batch if self._flights else None

    @property
    def in_flight_count(self) -> int:
        return len(self._flights)

    def _can_stream(self) -> bool:
        """Another batch may go out before the ones in flight are answered."""
        return (
            self._phase is _F
            and not self._draining
            and len(self._flights) < self._max_in_flight
            and self._flights[-1].more_waiting
        )

    # -- user commands -----------------------------------------------------------

    def configure(self, token: str) -> None:
        """A (new) token: start sending. Clears a pause and any backoff."""
        if not token:
            raise LocalProtocolError("configure() needs a token")
        self._move(_Trigger.CONFIGURE)
        self._token = token
        self._paused_reason = None
        self._consecutive_failures = 0
        self._server_error_streak = 0
        self._retry_floor = None
        self._reconcile_at = -math.inf  # a new pairing: reconcile at once
        if self._phase is not _F:
            self._step(_Step.RESET)

    def disable(self) -> None:
        """cloud.enabled = false or disconnect: forget the token, send nothing.

        An answer to a request already in flight is still accepted by
        receive(), so a 200 that arrives still marks its rows synced.
        """
        self._move(_Trigger.DISABLE)
        self._token = None
        self._paused_reason = None
        self._reconciler = None

    def pause(self) -> None:
        """``cloud pause``: stop sending after the request in flight, if any."""
        self._move(_Trigger.PAUSE)
        if self._paused_reason is None:
            self._paused_reason = PAUSED_BY_USER

    def resume(self, now: float) -> None:
        """``cloud resume``: send again (a 401 pause too: the server decides)."""
        self._move(_Trigger.RESUME)
        self._paused_reason = None
        self._evaluate_health(now, [])

    def sync_now(self, now: float) -> None:
        """``cloud sync``: skip the flush wait and a backoff wait, never a Retry-After."""
        if self._state not in _RUNNING:
            raise LocalProtocolError(
                f"cannot sync while {self._state.value}"
                + (f" ({self._paused_reason})" if self._paused_reason else "")
                + ": run `halton-meter cloud resume` or `cloud connect` first"
            )
        if self._phase in (_R, _S) or (
            self._phase is _B and (self._retry_floor is None or now >= self._retry_floor)
        ):
            self._step(_Step.POKE)

    def note_backlog(self, unsynced_rows: int, now: float) -> list[SyncEvent]:
        """The store's count of unsynced, unquarantined rows, as of ``now``.

        Call it after each commit and whenever rows are captured (coalescing
        is fine). A full batch waiting ends the flush wait early.
        """
        if unsynced_rows < 0:
            raise LocalProtocolError("unsynced_rows cannot be negative")
        self._unsynced_rows = unsynced_rows
        self._sample(now, unsynced_rows)
        if self._phase is _S and unsynced_rows >= self._row_limit:
            self._step(_Step.POKE)
        events: list[SyncEvent] = []
        self._evaluate_health(now, events)
        return events

    # -- reconcile ---------------------------------------------------------------

    def request_reconcile(self) -> None:
        """``cloud sync --reconcile``: the next reconcile is due at once."""
        self._reconcile_at = -math.inf

    @property
    def reconcile_at(self) -> float:
        """When the next reconcile is due (``-inf``: at once)."""
        return self._reconcile_at

    def reconcile_due(self, now: float) -> bool:
        """True when the driver should call ``start_reconcile`` now."""
        return self._state in _RUNNING and self._reconciler is None and now >= self._reconcile_at

    def start_reconcile(self, today: str, now: float) -> SendReconcile:
        """The totals request for the ``reconcile_days`` days ending ``today`` (UTC date)."""
        if self._state not in _RUNNING:
            raise LocalProtocolError(f"cannot reconcile while {self._state.value}")
        if self._reconciler is not None:
            raise LocalProtocolError("a reconcile is already in flight; feed its answer first")
        reconciler = Reconciler.last_days(today, self._reconcile_days)
        assert self._token is not None
        self._reconciler = reconciler
        return SendReconcile(
            reconciler.totals_request(self._token), reconciler.from_date, reconciler.to_date
        )

    def receive_reconcile(
        self,
        answer: Response | TransportFailure,
        local_totals: Mapping[str, DayTotal],
        now: float,
    ) -> ReconcileOutcome:
        """Compare and schedule the next reconcile; re-send ``days_to_resend`` at once.

        After a ReconcileResult with days to re-send, the driver marks those
        days' rows unsynced; the upload loop is already poked. A malformed
        answer raises RemoteProtocolError (the next try is scheduled first).
        """
        if self._reconciler is None:
            raise LocalProtocolError("receive_reconcile() without a reconcile in flight")
        reconciler, self._reconciler = self._reconciler, None
        try:
            outcome = reconciler.receive_totals(answer, local_totals)
        except ProtocolError:
            self._reconcile_at = now + RECONCILE_RETRY
            raise
        if isinstance(outcome, ReconcileResult):
            self._last_reconcile_at = now
            self._reconcile_at = now + self._reconcile_every
            if outcome.days_to_resend and self._state in _RUNNING:
                self.sync_now(now)
        elif isinstance(outcome, RetryLater):
            self._reconcile_at = now + max(RECONCILE_RETRY, outcome.retry_after or 0.0)
        else:  # Unauthorised: the next batch pauses on its own 401; CallFailed
            self._reconcile_at = now + RECONCILE_RETRY
        if isinstance(outcome, CallFailed):
            self._last_error = (
                f"reconcile: {outcome.status} {outcome.error}: {outcome.detail or 'no detail'}"
            )
        return outcome

    # -- the upload loop ---------------------------------------------------------

    def next_action(self, now: float) -> Action:
        if self._state not in _RUNNING:
            return Idle()
        if self._flights:
            return NeedRows(self._row_limit) if self._can_stream() else Idle()
        self._tick(now)
        if self._phase is _R:
            return NeedRows(self._row_limit)
        assert self._wake_at is not None
        return Wait(self._wake_at)

    def next_deadline(self) -> float | None:
        """When next_action() may change on its own; None: only on an input."""
        if self._flights or self._state not in _RUNNING:
            return None
        return self._wake_at if self._phase in (_B, _S) else None

    def _require_sendable(self, now: float) -> None:
        if self._state not in _RUNNING:
            raise LocalProtocolError(f"cannot send while {self._state.value}")
        if self._flights:
            if not self._can_stream():
                raise LocalProtocolError(
                    f"not ready to send: {len(self._flights)} batch(es) in flight"
                    + (" (one request at a time)" if self._max_in_flight == 1 else "")
                )
            return
        self._tick(now)
        if self._phase is not _R:
            reason = "one request at a time" if self._phase is _F else f"wait until {self._wake_at}"
            raise LocalProtocolError(f"not ready to send ({self._phase.value}): {reason}")

    def nothing_to_send(self, now: float) -> None:
        """The store has no unsynced row (beyond those in flight): rest for the flush interval
        (after the answers, when batches are in flight)."""
        self._require_sendable(now)
        if self._flights:
            self._flights[-1].more_waiting = False  # its answer rests the loop
            return
        self._step(_Step.NOTHING)
        self._wake_at = now + self._flush_interval

    def start_batch(self, rows: Sequence[EncodedRow], now: float) -> list[SyncEvent]:
        """Build the next batch from the oldest unsynced rows (as NeedRows asked).

        Returns a ``SendBatch`` to send, preceded by ``BatchQuarantined`` for
        any leading row too large to ever send. Rows beyond the batch are
        simply read again next time.
        """
        self._require_sendable(now)
        if not rows:
            self.nothing_to_send(now)
            return []
        events: list[SyncEvent] = []
        start = 0
        end = 0
        while start < len(rows):
            try:
                end = self._builder.fit(rows, start, max_rows=self._row_limit)
                break
            except RowTooLarge as exc:
                events.append(BatchQuarantined(None, (exc.row_id,), None, str(exc)))
                self._quarantined_rows += 1
                start += 1
        if start == len(rows):
            return events  # every row refused locally; READY to read more
        assert self._token is not None
        batch = self._builder.build_one(rows[start:end], self._entropy)
        more = len(rows) >= self._row_limit or end < len(rows)
        if not self._flights:
            self._step(_Step.SEND)
        self._flights.append(_InFlight(batch, more))
        events.append(SendBatch(batch, batch.to_request(self._token)))
        return events

    def receive(self, answer: Response | TransportFailure, now: float) -> list[SyncEvent]:
        """The answer to the oldest batch in flight (or the failure to get one)."""
        if not self._flights:
            raise LocalProtocolError("receive() without a batch in flight")
        flight = self._flights.popleft()
        if self._draining:
            return self._drained(flight, answer, now)
        batch = flight.batch
        events: list[SyncEvent] = []
        if isinstance(answer, TransportFailure):
            self._retry(batch, describe(answer), None, now, events)
        elif answer.status == 200:
            counts = _batch_counts(answer)
            if counts is None:
                # A 200 that is not a batch answer (captive portal, wrong
                # base URL behind a proxy) proves nothing was stored.
                self._retry(batch, "200 with a body that is not a batch answer", None, now, events)
            else:
                self._accepted(flight, counts, now, events)
        elif answer.status == 401:
            self._last_error = describe(answer)
            self._step(_Step.MORE)
            self._move(_Trigger.UNAUTHORISED)
            if self._state is _P:
                self._paused_reason = PAUSED_UNAUTHORISED
                events.append(Paused(PAUSED_UNAUTHORISED))
        elif answer.status == 413:
            self._last_error = describe(answer)
            self._step(_Step.MORE)
            self._split_or_quarantine(batch, answer.status, now, events, permanent=True)
        elif answer.status in REJECTED_STATUSES:
            self._last_error = describe(answer)
            self._step(_Step.MORE)
            self._split_or_quarantine(batch, answer.status, now, events, permanent=False)
        elif answer.status in RETRYABLE_STATUSES:
            self._retry(batch, describe(answer), retry_after(answer), now, events)
        elif 500 <= answer.status < 600:
            self._server_error_streak += 1
            if self._server_error_streak >= SERVER_ERROR_ATTEMPTS:
                self._last_error = describe(answer)
                self._server_error_streak = 0
                self._consecutive_failures += 1
                self._step(_Step.MORE)
                self._split_or_quarantine(batch, answer.status, now, events, permanent=False)
            else:
                self._retry(batch, describe(answer), retry_after(answer), now, events)
        else:
            # 3xx, 403, 404, 409, 415, ...: not the rows' fault but ours or the
            # deployment's (wrong base URL, proxy). Keep the rows, back off, report.
            self._retry(batch, describe(answer), None, now, events)
        if self._flights and not any(isinstance(e, BatchAccepted) for e in events):
            self._draining = True  # the stream ends here; the answers still out only ack
        self._evaluate_health(now, events)
        return events

    def _drained(
        self, flight: _InFlight, answer: Response | TransportFailure, now: float
    ) -> list[SyncEvent]:
        """An answer still out when an earlier one ended the stream: a 200 acks its rows;
        anything else leaves them unsynced, read again when the loop goes on (a
        ``Retry-After`` still holds the next attempt back)."""
        if not self._flights:
            self._draining = False
        events: list[SyncEvent] = []
        counts = _batch_counts(answer) if isinstance(answer, Response) and answer.status == 200 else None
        if counts is not None:
            self._last_sync_at = now
            self._count_acked(len(flight.batch.row_ids), now)
            events.append(BatchAccepted(flight.batch.batch_id, flight.batch.row_ids, *counts))
        else:
            delay = retry_after(answer)
            if delay is not None and self._phase is _B:
                floor = now + delay
                self._retry_floor = max(floor, self._retry_floor or floor)
                self._wake_at = max(floor, self._wake_at or floor)
        self._evaluate_health(now, events)
        return events

    # -- answers -----------------------------------------------------------------

    def _accepted(
        self, flight: _InFlight, counts: tuple[int, int], now: float, events: list[SyncEvent]
    ) -> None:
        batch = flight.batch
        self._consecutive_failures = 0
        self._server_error_streak = 0
        self._retry_floor = None
        self._last_error = None
        self._last_sync_at = now
        self._row_limit = min(self._row_ceiling, self._row_limit * 2)
        self._count_acked(len(batch.row_ids), now)
        if self._flights:
            pass  # still in flight: the last answer moves the loop on
        elif flight.more_waiting:
            self._step(_Step.MORE)
        else:
            self._step(_Step.DRAINED)
            self._wake_at = now + self._flush_interval
        events.append(BatchAccepted(batch.batch_id, batch.row_ids, counts[0], counts[1]))

    def _count_acked(self, rows: int, now: float) -> None:
        if self._unsynced_rows is not None:
            self._unsynced_rows = max(0, self._unsynced_rows - rows)
            self._sample(now, self._unsynced_rows)

    def _retry(
        self,
        batch: Batch,
        reason: str,
        retry_after: float | None,
        now: float,
        events: list[SyncEvent],
    ) -> None:
        attempt = self._consecutive_failures
        self._consecutive_failures += 1
        self._last_error = reason
        # The batch's rows are certainly still unsynced, even if the driver
        # never reported a backlog: failures with rows waiting degrade.
        self._unsynced_rows = max(self._unsynced_rows or 0, len(batch.row_ids))
        at = now + self._backoff.delay(attempt, self._entropy, retry_after)
        self._retry_floor = now + retry_after if retry_after is not None else None
        self._step(_Step.FAILED)
        self._wake_at = at
        events.append(BatchRetryScheduled(batch.batch_id, at, self._consecutive_failures, reason))

    def _split_or_quarantine(
        self, batch: Batch, status: int, now: float, events: list[SyncEvent], *, permanent: bool
    ) -> None:
        """Halve the next batch to isolate the refused rows; a lone row is quarantined.

        ``permanent`` (413): the server's size limit is below ours, so the
        lower row limit stays for this session instead of growing back.
        """
        if len(batch.row_ids) > 1:
            self._row_limit = max(1, len(batch.row_ids) // 2)
            if permanent:
                self._row_ceiling = self._row_limit
            events.append(BatchSplit(batch.batch_id, len(batch.row_ids), self._row_limit, status))
            return
        self._quarantined_rows += 1
        self._row_limit = min(self._row_ceiling, self._row_limit * 2)
        events.append(
            BatchQuarantined(batch.batch_id, batch.row_ids, status, self._last_error or str(status))
        )

    # -- the DEGRADED measure ----------------------------------------------------

    def _sample(self, now: float, count: int) -> None:
        if self._samples and now - self._samples[-1][0] < _SAMPLE_SPACING:
            # Keep the older timestamp so a steady stream of notes still ages.
            self._samples[-1] = (self._samples[-1][0], count)
        else:
            self._samples.append((now, count))
        horizon = now - DEGRADED_WINDOW
        # Keep exactly one sample at or before the horizon: the baseline.
        while len(self._samples) >= 2 and self._samples[1][0] <= horizon:
            self._samples.popleft()

    def _strained(self, now: float) -> bool:
        backlog = self._unsynced_rows or 0
        if backlog == 0:
            return False
        if self._consecutive_failures >= DEGRADED_AFTER_FAILURES:
            return True
        if backlog <= self._builder.max_rows or not self._samples:
            return False
        baseline_at, baseline = self._samples[0]
        return baseline_at <= now - DEGRADED_WINDOW and backlog > baseline

    def _evaluate_health(self, now: float, events: list[SyncEvent]) -> None:
        before = self._state
        self._move(_Trigger.STRAINED if self._strained(now) else _Trigger.HEALTHY)
        if self._state is not before:
            events.append(StateChanged(self._state))

    def snapshot(self) -> SyncStatus:
        return SyncStatus(
            state=self._state,
            paused_reason=self._paused_reason,
            last_sync_at=self._last_sync_at,
            unsynced_rows=self._unsynced_rows,
            last_error=self._last_error,
            last_reconcile_at=self._last_reconcile_at,
            consecutive_failures=self._consecutive_failures,
            next_attempt_at=self.next_deadline(),
            quarantined_rows=self._quarantined_rows,
            in_flight=bool(self._flights),
        )
