"""hm_proto: the sans-IO protocol core of Halton Meter (client side).

Pure state objects in the style of h11: they take bytes or events and
``now`` and hand back requests, events and ``next_deadline()``. No clock, no
randomness, no I/O: time and entropy are parameters, so the same objects run
under asyncio, trio, threads or a library user's own event loop.

The rules every object follows (proto/README.md explains them with examples):

- **Clock.** ``now`` is seconds on one monotonic clock of the caller's
  choosing (``time.monotonic()``, ``anyio.current_time()``); every deadline
  handed back is on that clock. Wall-clock dates enter only as explicit
  ``YYYY-MM-DD`` parameters (``Reconciler.last_days(today)``,
  ``SyncSession.reconcile_range(today)``).
- **Entropy.** Whatever draws randomness takes ``entropy``, a callable that
  returns *n* random bytes (``secrets.token_bytes``).
- **Errors.** Outcomes the caller handles come back as events or outcome
  objects (``RetryScheduled``, ``Unauthorised``, ``CallFailed``, ...).
  Exceptions are for misuse (``LocalProtocolError``: a move the state
  machine does not allow, a bad argument) and for a peer that breaks the
  contract (``RemoteProtocolError``: a malformed answer).
- **Stable API.** The names in ``__all__`` here and in ``hm_proto.server``
  (what a backend needs: code and token generators, row validation).
  Modules starting with ``_`` are private.
"""

from __future__ import annotations

from ._batch import (
    DEFAULT_ENCODING,
    ENVELOPE_BYTES,
    MAX_BATCH_BYTES,
    MAX_BATCH_ROWS,
    Batch,
    BatchBuilder,
    ContentEncoding,
    EncodedRow,
    RowTooLarge,
    new_batch_id,
)
from ._codes import Entropy, format_user_code, looks_like_token, normalize_user_code
from ._dates import add_days, date_range, days_between, is_valid_date, validate_date
from ._errors import ApiError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._http import Headers, Request, Response, TransportFailure
from ._outcomes import CallFailed, RetryLater, Unauthorised
from ._pairing import (
    DEFAULT_START_ATTEMPTS,
    UNREACHABLE,
    Approved,
    CancelAcknowledged,
    Cancelled,
    CancelOutcome,
    CodeIssued,
    Denied,
    Expired,
    PairingClient,
    PairingError,
    PairingOutcome,
    PairingState,
    Pending,
    PollEvent,
    RetryScheduled,
    SlowDown,
    StartEvent,
    receive_cancel,
)
from ._reconcile import DayTotal, ReconcileOutcome, Reconciler, ReconcileResult
from ._retry import (
    MAX_RETRY_AFTER,
    RETRYABLE_STATUSES,
    BackoffPolicy,
    is_retryable,
    is_retryable_status,
    parse_retry_after,
    retry_after,
)
from ._revoke import (
    Revoked,
    RevokeOutcome,
    WhoAmI,
    WhoAmIOutcome,
    parse_whoami,
    receive_revoke,
    revoke_request,
    whoami_request,
)
from ._rows import (
    ATTRIBUTION_FIELDS,
    MAX_NAME_CHARS,
    MAX_TAGS,
    UsageRow,
    name_problem,
    parse_tags,
    tag_problem,
)
from ._sync import (
    MAX_IN_FLIGHT,
    PAUSED_BY_USER,
    PAUSED_REASONS,
    PAUSED_UNAUTHORISED,
    RECONCILE_EVERY,
    RECONCILE_RETRY,
    Action,
    BatchAccepted,
    BatchQuarantined,
    BatchRetryScheduled,
    BatchSplit,
    Idle,
    NeedRows,
    Paused,
    SendBatch,
    SendReconcile,
    StateChanged,
    SyncEvent,
    SyncSession,
    SyncState,
    SyncStatus,
    Wait,
    state_without_driver,
)
from ._wire import ClientConnection, TunnelHandshake

__all__ = [
    # errors and the transport-neutral HTTP objects
    "ApiError",
    "Headers",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "TransportFailure",
    # outcomes of the one-shot calls, and retry timing
    "MAX_RETRY_AFTER",
    "RETRYABLE_STATUSES",
    "BackoffPolicy",
    "CallFailed",
    "Entropy",
    "RetryLater",
    "Unauthorised",
    "is_retryable",
    "is_retryable_status",
    "parse_retry_after",
    "retry_after",
    # pairing
    "DEFAULT_START_ATTEMPTS",
    "UNREACHABLE",
    "Approved",
    "CancelAcknowledged",
    "CancelOutcome",
    "Cancelled",
    "CodeIssued",
    "Denied",
    "Expired",
    "PairingClient",
    "PairingError",
    "PairingOutcome",
    "PairingState",
    "Pending",
    "PollEvent",
    "RetryScheduled",
    "SlowDown",
    "StartEvent",
    "format_user_code",
    "looks_like_token",
    "normalize_user_code",
    # the usage row and upload batches
    "DEFAULT_ENCODING",
    "ENVELOPE_BYTES",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ROWS",
    "Batch",
    "BatchBuilder",
    "ContentEncoding",
    "RowTooLarge",
    "EncodedRow",
    "UsageRow",
    # attribution fields of a row (who spent it) and their bounds
    "ATTRIBUTION_FIELDS",
    "MAX_NAME_CHARS",
    "MAX_TAGS",
    "name_problem",
    "parse_tags",
    "tag_problem",
    "new_batch_id",
    # the sync session (docs/sync.md)
    "MAX_IN_FLIGHT",
    "PAUSED_BY_USER",
    "PAUSED_REASONS",
    "PAUSED_UNAUTHORISED",
    "RECONCILE_EVERY",
    "RECONCILE_RETRY",
    "Action",
    "BatchAccepted",
    "BatchQuarantined",
    "BatchRetryScheduled",
    "BatchSplit",
    "Idle",
    "NeedRows",
    "Paused",
    "SendBatch",
    "SendReconcile",
    "StateChanged",
    "SyncEvent",
    "SyncSession",
    "SyncState",
    "SyncStatus",
    "Wait",
    "state_without_driver",
    # reconcile, revoke, whoami, dates
    "DayTotal",
    "ReconcileOutcome",
    "ReconcileResult",
    "Reconciler",
    "RevokeOutcome",
    "Revoked",
    "WhoAmI",
    "WhoAmIOutcome",
    "add_days",
    "date_range",
    "days_between",
    "is_valid_date",
    "parse_whoami",
    "receive_cancel",
    "receive_revoke",
    "revoke_request",
    "validate_date",
    "whoami_request",
    # HTTP/1.1 bytes for drivers with only a socket
    "ClientConnection",
    "TunnelHandshake",
]

__version__ = "0.2.1"
