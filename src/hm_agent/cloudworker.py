"""The sync worker: the ``cloud`` component, driving hm_proto's SyncSession.

It runs while ``[cloud] enabled = true``: reads the oldest unsynced rows,
sends a batch, and marks rows synced only when the backend's 200 names the
batch (ack-then-commit), plus the reconcile the session schedules.

All decisions are hm_proto's, pause, resume and the reconcile schedule
included; this module only moves bytes, rows and time, and stores and
restores the session's state. The session runs on ``time.monotonic()``;
stored times are wall-clock ISO strings, converted by their age.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from hm_proto import (
    MAX_IN_FLIGHT,
    PAUSED_BY_USER,
    PAUSED_REASONS,
    BatchAccepted,
    BatchQuarantined,
    BatchRetryScheduled,
    BatchSplit,
    CallFailed,
    LocalProtocolError,
    NeedRows,
    Paused,
    ProtocolError,
    ReconcileResult,
    Response,
    SendBatch,
    StateChanged,
    SyncEvent,
    SyncSession,
    SyncState,
    TransportFailure,
    Wait,
)
from hm_proto_client import AsyncCloudClient

from . import (
    cloudcommands,  # noqa: F401  (registers the cloud.* control commands)
)
from .cloudlink import (
    CloudLinkError,
    iso_from_monotonic,
    load_credentials,
    monotonic_from_iso,
    utc_now_iso,
)
from .cloudservice import SERVICE, CloudContext, cloud_client
from .config import Config
from .store import Store

log = logging.getLogger("hm_agent.cloud")

BACKLOG_REFRESH = 5.0  # how often an idle worker (or a long stream) re-counts unsynced rows


def _pipeline_depth(value: str | None, default: int = 3) -> int:
    """Batches on the wire at once while a backlog streams, one connection each:
    HALTON_METER_SYNC_PIPELINE (1 to MAX_IN_FLIGHT; anything else: the default)."""
    try:
        depth = int(value or default)
    except ValueError:
        return default
    return depth if 1 <= depth <= MAX_IN_FLIGHT else default


PIPELINE = _pipeline_depth(os.environ.get("HALTON_METER_SYNC_PIPELINE"))


@dataclass(eq=False)
class _Flight:
    """A batch on the wire: its lane (connection), then its answer and what the session made of it."""

    send: SendBatch
    lane: AsyncCloudClient
    answer: Response | TransportFailure | None = None
    events: list[SyncEvent] | None = None
    received: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class SyncWaiter:
    """A `cloud sync` waiting for the worker to drain the backlog (or fail)."""

    done: anyio.Event = field(default_factory=anyio.Event)
    batches: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    reconcile: dict[str, Any] | None = None
    want_reconcile: bool = False

    def finish(self, error: str | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.done.set()



# -- the sync worker ----------------------------------------------------------------


class CloudWorker:
    name = "cloud"

    def __init__(self) -> None:
        self.session: SyncSession | None = None
        self.base_url: str | None = None
        self.workspace_slug: str | None = None
        self.error: str | None = None  # a local problem (credentials), not the server's
        self._poke = anyio.Event()
        self._reload = False
        self._waiters: list[SyncWaiter] = []
        self._last_reconcile: dict[str, Any] | None = None
        self._rowids: dict[str, int] = {}  # rows read for the batches in flight: id -> rowid

    # -- supervisor protocol --------------------------------------------------------

    def should_run(self, config: Config, home: Path) -> bool:
        # Paused or not: a paused SyncSession sends nothing, and resumes itself.
        return bool(config.cloud_enabled)

    def health(self) -> dict[str, Any]:
        return self.status_dict()

    async def run(self, ctx: CloudContext) -> None:
        SERVICE.worker = self
        try:
            await self._run(ctx)
        finally:
            if SERVICE.worker is self:
                SERVICE.worker = None
            for waiter in self._waiters:
                waiter.finish("the cloud worker stopped before the upload finished")
            self._waiters.clear()

    # -- commands from the control socket ------------------------------------------------

    def poke(self) -> None:
        self._poke.set()

    def reload(self) -> None:
        """New credentials were written: pick up the new token on the next turn."""
        self._reload = True
        self.poke()

    def request_sync(self, reconcile: bool) -> SyncWaiter:
        waiter = SyncWaiter(want_reconcile=reconcile)
        if self.session is None:
            waiter.finish(self.error or "the cloud worker is starting; try again in a few seconds")
            return waiter
        try:
            self.session.sync_now(time.monotonic())
        except LocalProtocolError as exc:
            waiter.finish(str(exc))
            return waiter
        if reconcile:
            self.session.request_reconcile()
        self._waiters.append(waiter)
        self.poke()
        return waiter

    def status_dict(self) -> dict[str, Any]:
        """The session's status, with its monotonic times as wall-clock ISO strings."""
        if self.session is None:  # starting, or the credentials cannot be used (nothing uploads)
            return {"state": SyncState.DEGRADED.value, "last_error": self.error} if self.error else {}
        snap = self.session.snapshot().to_dict()
        now_mono, now_wall = time.monotonic(), time.time()
        for key in ("last_sync_at", "last_reconcile_at", "next_attempt_at"):
            snap[key] = iso_from_monotonic(snap[key], now_mono, now_wall)
        if self.error and not snap.get("last_error"):
            snap["last_error"] = self.error
        snap["base_url"] = self.base_url
        snap["workspace_slug"] = self.workspace_slug
        snap["last_reconcile"] = self._last_reconcile
        return snap

    # -- the loop -----------------------------------------------------------------------

    async def _load(self, ctx: CloudContext) -> SyncSession | None:
        try:
            creds = await anyio.to_thread.run_sync(load_credentials, ctx.home, ctx.store)
        except CloudLinkError as exc:
            self.error = str(exc)
            log.error("cloud worker cannot start: %s", exc)
            return None
        self.error = None
        state = await anyio.to_thread.run_sync(ctx.store.get_cloud_state) or {}
        quarantined = await anyio.to_thread.run_sync(ctx.store.count_quarantined)
        self.base_url = creds.base_url or ctx.config.cloud_base_url
        self.workspace_slug = state.get("workspace_slug") or creds.workspace_slug
        now_mono, now_wall = time.monotonic(), time.time()
        reason = (state.get("paused_reason") or PAUSED_BY_USER) if state.get("paused") else None
        return SyncSession(
            secrets.token_bytes,
            token=creds.token,
            paused_reason=reason if reason in PAUSED_REASONS else None,
            last_sync_at=monotonic_from_iso(state.get("last_sync_at"), now_mono, now_wall),
            last_error=state.get("last_error"),
            last_reconcile_at=monotonic_from_iso(state.get("last_reconcile_at"), now_mono, now_wall),
            quarantined_rows=quarantined,
            max_in_flight=PIPELINE,
        )

    async def _run(self, ctx: CloudContext) -> None:
        while True:
            self._reload = False
            self.session = await self._load(ctx)
            if self.session is None:
                await self._sleep(BACKLOG_REFRESH * 6)
                continue
            assert self.base_url is not None
            async with AsyncExitStack() as stack:
                lanes = [await stack.enter_async_context(cloud_client(ctx.config, self.base_url))
                         for _ in range(PIPELINE)]  # each connects on its first request
                while not self._reload:
                    await self._turn(ctx, lanes, self.session)

    async def _sleep(self, seconds: float) -> None:
        with anyio.move_on_after(max(0.0, seconds)):
            await self._poke.wait()
        self._poke = anyio.Event()

    async def _turn(self, ctx: CloudContext, lanes: Sequence[AsyncCloudClient], session: SyncSession) -> None:
        store = ctx.store
        now = time.monotonic()
        if session.reconcile_due(now):
            await self._reconcile(ctx, lanes[0], session, now)
        backlog = await anyio.to_thread.run_sync(store.count_unsynced)
        session.note_backlog(backlog, now)
        action = session.next_action(now)
        if isinstance(action, NeedRows):
            rows, cursor = await self._read(store, action.limit, None)
            if not rows:
                session.nothing_to_send(now)
                self._finish_waiters()
                return
            try:
                await self._upload(ctx, lanes, session, rows, cursor)
            finally:
                self._rowids.clear()
            return
        if self._waiters and session.state not in (SyncState.ACTIVE, SyncState.DEGRADED):
            self._finish_waiters(session.snapshot().last_error or f"sync is {session.state.value}")
        if isinstance(action, Wait):
            await self._sleep(min(action.until - now, BACKLOG_REFRESH))
        else:
            await self._sleep(BACKLOG_REFRESH)

    async def _upload(self, ctx: Any, lanes: Sequence[AsyncCloudClient], session: SyncSession,
                      rows: list[tuple[str, bytes]], cursor: tuple[str, str] | None) -> None:
        """A backlog streamed with up to ``PIPELINE`` batches on the wire, each on its own
        kept-alive connection (``lanes``): as soon as batch N is answered, the rows of the
        next one are read on from the unsynced index past the rows still in flight (never
        a rescan) and sent, and only then is N marked synced — so the backend always has
        a batch to work on while the daemon reads, compresses and marks. Still
        ack-then-commit: a batch is marked only after its own 200, and a crash before
        that re-sends it (row ids make that idempotent). Anything but an accepted batch
        ends the stream (the answers still out only ack: hm_proto's SyncSession), and the
        next turn starts over from the store, as does the end of the backlog (rows
        written since with an older ts)."""
        store = ctx.store
        free = list(lanes)
        flights: deque[_Flight] = deque()  # sent, in order; the session reads answers in this order
        stop = False

        def answered(flight: _Flight, answer: Response | TransportFailure) -> None:
            # The session reads each answer as soon as it and those before it are in,
            # so status never shows a finished batch in flight.
            flight.answer = answer
            for done in flights:
                if done.events is None:
                    if done.answer is None:
                        break
                    done.events = session.receive(done.answer, time.monotonic())
                    done.received.set()

        async def fly(flight: _Flight) -> None:
            answered(flight, await flight.lane.send(flight.send.request))

        counted = time.monotonic()
        handle: list[SyncEvent] = []
        async with anyio.create_task_group() as tg:
            while True:
                # Fill the pipeline while the session lets more batches go out.
                while not stop and free and not self._reload:
                    now = time.monotonic()
                    action = session.next_action(now)
                    if not isinstance(action, NeedRows):
                        break
                    if len(rows) < action.limit:  # read on past the rows in flight (and left over)
                        more, cursor = await self._read(store, action.limit - len(rows), cursor)
                        rows += more
                        if not rows:
                            if not flights:
                                stop = True  # end of the backlog: the next turn starts over
                                break
                            if isinstance(session.next_action(now), NeedRows):
                                session.nothing_to_send(now)  # nothing past the rows in flight
                            continue
                        now = time.monotonic()
                        if not isinstance(session.next_action(now), NeedRows):
                            continue  # an answer came in meanwhile and ended the stream, or a pause
                    send: SendBatch | None = None
                    used = 0
                    for event in session.start_batch(rows, now):
                        if isinstance(event, SendBatch):
                            send = event
                            used += len(event.batch)
                        elif isinstance(event, BatchQuarantined):
                            await self._handle(ctx, event)  # a row too large to ever send
                            used += len(event.row_ids)
                    rows = rows[used:]  # what did not fit (4 MiB) goes in the next batch
                    if send is not None:
                        flight = _Flight(send, free.pop())
                        flights.append(flight)
                        tg.start_soon(fly, flight)
                # The last answer's events, after the next batch went out: BatchAccepted
                # marks its rows synced here, and only here, while the wire stays busy.
                for event in handle:
                    await self._handle(ctx, event)
                if not flights:
                    break
                flight = flights[0]
                await flight.received.wait()
                flights.popleft()
                free.append(flight.lane)
                assert flight.events is not None
                handle = flight.events
                if not all(isinstance(e, BatchAccepted | StateChanged) for e in handle):
                    stop = True  # split, retry, pause, quarantine: the answers still out only ack
                now = time.monotonic()
                if self._waiters and session.state in (SyncState.ACTIVE, SyncState.DEGRADED):
                    # A `cloud sync` is waiting: look for more rows now, not after
                    # the flush rest (a `cloud sync` that uploaded rows took 5 s longer).
                    session.sync_now(now)
                if now - counted >= BACKLOG_REFRESH and not stop:
                    # A long stream still counts rows captured meanwhile (the DEGRADED measure).
                    counted = now
                    backlog = await anyio.to_thread.run_sync(store.count_unsynced)
                    session.note_backlog(max(0, backlog - sum(len(f.send.batch) for f in flights)), now)

    async def _read(self, store: Store, limit: int, after: tuple[str, str] | None
                    ) -> tuple[list[tuple[str, bytes]], tuple[str, str] | None]:
        """The oldest unsynced rows (after ``after``), their rowids kept for marking them."""
        rows, rowids, cursor = await anyio.to_thread.run_sync(store.fetch_unsynced_rows, limit, after)
        self._rowids.update(zip((r[0] for r in rows), rowids, strict=True))
        return rows, cursor

    def _finish_waiters(self, error: str | None = None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.want_reconcile and waiter.reconcile is None:
                waiter.reconcile = self._last_reconcile
            waiter.finish(error)

    async def _handle(self, ctx: CloudContext, event: SyncEvent) -> None:
        store = ctx.store
        if isinstance(event, BatchAccepted):
            at = utc_now_iso()
            known = [self._rowids.pop(i, None) for i in event.row_ids]
            rowids = None if None in known else [r for r in known if r is not None]
            await anyio.to_thread.run_sync(store.mark_synced, list(event.row_ids), at, rowids)
            await anyio.to_thread.run_sync(lambda: store.set_cloud_state(last_sync_at=at, last_error=None))
            for waiter in self._waiters:
                waiter.batches.append(
                    {"status": 200, "rows": len(event.row_ids), "accepted": event.accepted,
                     "duplicates": event.duplicates, "batch_id": event.batch_id}
                )
        elif isinstance(event, BatchQuarantined):
            log.error("rows quarantined (%s): %s", event.status, event.detail)
            await anyio.to_thread.run_sync(
                store.quarantine_rows, list(event.row_ids), event.status, event.detail
            )
            for waiter in self._waiters:
                waiter.batches.append({"status": event.status, "rows": len(event.row_ids),
                                       "reason": f"quarantined: {event.detail}"})
        elif isinstance(event, BatchSplit):
            log.warning("batch %s refused whole (%s); retrying in batches of %d",
                        event.batch_id, event.status, event.next_row_limit)
        elif isinstance(event, BatchRetryScheduled):
            at_iso = iso_from_monotonic(event.at, time.monotonic(), time.time())
            log.warning("upload failed (%s); retry %d at %s", event.reason, event.attempt, at_iso)
            await anyio.to_thread.run_sync(lambda: store.set_cloud_state(last_error=event.reason))
            for waiter in self._waiters:
                waiter.batches.append({"status": None, "reason": event.reason})
            self._finish_waiters(f"{event.reason}; the worker retries at {at_iso}")
        elif isinstance(event, Paused):
            log.error("sync paused: %s", event.reason)
            reason = event.reason
            await anyio.to_thread.run_sync(
                lambda: store.set_cloud_state(paused=1, paused_reason=reason,
                                              last_error="401: the token was revoked or is unknown")
            )
            self._finish_waiters(
                "the backend answered 401: the token was revoked. Re-run `halton-meter cloud connect`."
            )

    async def _reconcile(
        self, ctx: CloudContext, client: AsyncCloudClient, session: SyncSession, now: float
    ) -> None:
        """One reconcile, when the session says it is due; it schedules the next."""
        store = ctx.store
        send = session.start_reconcile(datetime.now(UTC).strftime("%Y-%m-%d"), now)
        answer = await client.send(send.request)
        local = await anyio.to_thread.run_sync(store.totals_by_day, send.from_date, send.to_date)
        try:
            outcome = session.receive_reconcile(answer, local, time.monotonic())
        except ProtocolError as exc:
            log.error("reconcile failed: %s", exc)
            self._last_reconcile = {"error": str(exc)}
            return
        if isinstance(outcome, ReconcileResult):
            resent = 0
            if outcome.days_to_resend:
                rows = await anyio.to_thread.run_sync(store.rows_for_days, outcome.days_to_resend)
                resent = await anyio.to_thread.run_sync(store.mark_unsynced, [r[0] for r in rows])
                log.info("reconcile: re-sending %d rows of %s", resent, ", ".join(outcome.days_to_resend))
            at = utc_now_iso()
            await anyio.to_thread.run_sync(lambda: store.set_cloud_state(last_reconcile_at=at))
            self._last_reconcile = {
                "from_date": outcome.from_date,
                "to_date": outcome.to_date,
                "resent_days": list(outcome.days_to_resend),
                "resent_rows": resent,
                "cloud_extra_days": list(outcome.cloud_extra_days),
            }
        elif isinstance(outcome, CallFailed):
            error = f"GET /v1/requests/totals answered {outcome.status} {outcome.error}: {outcome.detail or 'no detail'}"
            log.error("reconcile failed: %s", error)
            self._last_reconcile = {"error": error}
        # Unauthorised and RetryLater: the session scheduled the next try.



def make_component() -> CloudWorker:
    return CloudWorker()
