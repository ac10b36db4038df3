"""hm_proto: the sans-IO protocol core of Halton Meter.

Pure state objects in the style of h11: they take bytes or events and
``now`` (seconds, any monotonic origin) and hand back requests, events and
``next_deadline()``. No clock, no randomness, no I/O: time and entropy are
parameters, so the same objects run under asyncio, trio, threads or a
library user's own event loop.
"""

from __future__ import annotations

from ._backoff import BackoffPolicy, parse_retry_after
from ._batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ROWS,
    Batch,
    BatchBuilder,
    RowTooLarge,
    StoredRow,
    new_batch_id,
)
from ._codes import (
    USER_CODE_ALPHABET,
    Entropy,
    format_user_code,
    generate_device_code,
    generate_token,
    generate_user_code,
    hash_token,
    looks_like_token,
    normalize_user_code,
    token_matches,
)
from ._dates import add_days, date_range, days_between, is_valid_date, validate_date
from ._errors import ApiError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._http import Request, Response, TransportFailure
from ._outcomes import CallFailed, RetryLater, Unauthorised
from ._pairing import (
    Approved,
    Cancelled,
    CodeIssued,
    Denied,
    Expired,
    PairingClient,
    PairingError,
    PairingState,
    Pending,
    RetryScheduled,
    SlowDown,
)
from ._reconcile import Reconciler, ReconcileResult
from ._revoke import Revoked, WhoAmI, parse_whoami, receive_revoke, revoke_request, whoami_request
from ._rows import UsageRow, parse_row
from ._sync import (
    BatchAccepted,
    BatchQuarantined,
    BatchRetryScheduled,
    BatchSplit,
    Idle,
    NeedRows,
    Paused,
    SendBatch,
    StateChanged,
    SyncEvent,
    SyncSession,
    SyncState,
    SyncStatus,
    Wait,
)
from ._wire import ClientConnection

__all__ = [
    "USER_CODE_ALPHABET",
    "ApiError",
    "Entropy",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "TransportFailure",
    "UsageRow",
    "format_user_code",
    "generate_device_code",
    "generate_token",
    "generate_user_code",
    "hash_token",
    "looks_like_token",
    "normalize_user_code",
    "parse_row",
    "token_matches",
]

# pairing, reconcile, revoke, whoami, dates and the HTTP/1.1 wire adapter
__all__ += [
    "Approved",
    "CallFailed",
    "Cancelled",
    "ClientConnection",
    "CodeIssued",
    "Denied",
    "Expired",
    "PairingClient",
    "PairingError",
    "PairingState",
    "Pending",
    "ReconcileResult",
    "Reconciler",
    "RetryLater",
    "RetryScheduled",
    "Revoked",
    "SlowDown",
    "Unauthorised",
    "WhoAmI",
    "add_days",
    "date_range",
    "days_between",
    "is_valid_date",
    "parse_whoami",
    "receive_revoke",
    "revoke_request",
    "validate_date",
    "whoami_request",
]

# batching, backoff and the sync session (docs/sync.md)
__all__ += [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ROWS",
    "BackoffPolicy",
    "Batch",
    "BatchAccepted",
    "BatchBuilder",
    "BatchQuarantined",
    "BatchRetryScheduled",
    "BatchSplit",
    "Idle",
    "NeedRows",
    "Paused",
    "RowTooLarge",
    "SendBatch",
    "StateChanged",
    "StoredRow",
    "SyncEvent",
    "SyncSession",
    "SyncState",
    "SyncStatus",
    "Wait",
    "new_batch_id",
    "parse_retry_after",
]

__version__ = "0.2.1"
