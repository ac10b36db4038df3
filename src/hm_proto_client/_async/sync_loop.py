"""Drive a SyncSession against a RowStore over a client: the upload loop in one call.

``run_sync_async(client, session, store)`` does what docs/sync.md's driver
contract says: it feeds the backlog, reads the oldest unsynced rows when the
session asks, sends each batch, marks rows synced only on ``BatchAccepted``
(ack-then-commit), quarantines what the session quarantines, sleeps until
the session's next deadline, and runs the reconcile the session schedules
(with today's UTC date, the only wall-clock input). Transport failures and
backend restarts are retried with the session's backoff.

With ``until_drained=True`` it returns once every row is uploaded (or the
session pauses); otherwise it runs until cancelled. Either way it returns
the session's last status.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from hm_proto import (
    BatchAccepted,
    BatchQuarantined,
    Idle,
    NeedRows,
    ProtocolError,
    ReconcileResult,
    SendBatch,
    SyncEvent,
    SyncSession,
    SyncStatus,
)

from .._backends.anyio import current_time, sleep
from .._store import RowStore
from .client import AsyncCloudClient

OnSyncEvent = Callable[[SyncEvent], None]

#: Re-read the store's backlog at least this often while resting.
IDLE_RECHECK = 5.0


def utc_today() -> str:
    """The UTC date, ``YYYY-MM-DD``: reconcile's one wall-clock input."""
    return datetime.now(UTC).strftime("%Y-%m-%d")


async def run_sync_async(
    client: AsyncCloudClient,
    session: SyncSession,
    store: RowStore,
    *,
    until_drained: bool = False,
    on_event: OnSyncEvent | None = None,
    today: Callable[[], str] = utc_today,
) -> SyncStatus:
    """Upload ``store``'s rows as ``session`` decides; see the module docstring."""
    while True:
        now = current_time()
        if session.reconcile_due(now):
            await _reconcile(client, session, store, today(), now)
            continue
        backlog = store.count_unsynced()
        session.note_backlog(backlog, now)
        action = session.next_action(now)
        if isinstance(action, Idle):  # paused (401, or the caller paused it), or no token
            return session.snapshot()
        if isinstance(action, NeedRows):
            rows = store.unsynced(action.limit)
            if not rows:
                session.nothing_to_send(now)
                if until_drained:
                    return session.snapshot()
                continue
            for event in session.start_batch(rows, now):
                if isinstance(event, SendBatch):
                    answer = await client.send(event.request)
                    for answered in session.receive(answer, current_time()):
                        _apply(store, answered, on_event)
                else:
                    _apply(store, event, on_event)
            continue
        if until_drained and backlog == 0:
            return session.snapshot()
        wake = min(action.until, session.reconcile_at, now + IDLE_RECHECK)
        await sleep(wake - now)


def _apply(store: RowStore, event: SyncEvent, on_event: OnSyncEvent | None) -> None:
    if isinstance(event, BatchAccepted):
        store.mark_synced(event.row_ids)  # ack-then-commit: only now
    elif isinstance(event, BatchQuarantined):
        store.quarantine(event.row_ids, event.detail)
    if on_event is not None:
        on_event(event)


async def _reconcile(
    client: AsyncCloudClient, session: SyncSession, store: RowStore, today: str, now: float
) -> None:
    send = session.start_reconcile(today, now)
    answer = await client.send(send.request)
    local = store.totals_by_day(send.from_date, send.to_date)
    try:
        outcome = session.receive_reconcile(answer, local, current_time())
    except ProtocolError:
        return  # a malformed answer: the session scheduled the next try
    if isinstance(outcome, ReconcileResult) and outcome.days_to_resend:
        store.resend_days(outcome.days_to_resend)
