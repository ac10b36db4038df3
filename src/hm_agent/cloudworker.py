"""The cloud side of the daemon: pairing and the sync worker, driving hm_proto.

Two supervisor components and the ``cloud.*`` control commands live here:

- ``cloud-pairing`` runs while a ``cloud connect`` is in progress: it drives
  a ``PairingClient`` over the async client, and on approval writes the
  pairing files (``cloudlink.save_pairing``) and wakes the supervisor;
- ``cloud`` (the worker) runs while ``[cloud] enabled = true``: it drives a
  ``SyncSession`` — reads the oldest unsynced rows, sends a batch, and marks
  rows synced only when the backend's 200 names the batch (ack-then-commit) —
  plus the reconcile the session schedules.

All decisions are hm_proto's, pause, resume and the reconcile schedule
included; this module only moves bytes, rows and time, and stores and
restores the session's state. The session runs on ``time.monotonic()``;
stored times are wall-clock ISO strings, converted by their age.
The cloud is reached directly (``AsyncCloudClient`` ignores HTTPS_PROXY), so
sync traffic never passes through — nor is captured by — our own proxy.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from hm_proto import (
    PAUSED_BY_USER,
    PAUSED_REASONS,
    Approved,
    BatchAccepted,
    BatchQuarantined,
    BatchRetryScheduled,
    BatchSplit,
    CallFailed,
    CancelAcknowledged,
    CodeIssued,
    Denied,
    Expired,
    LocalProtocolError,
    NeedRows,
    PairingClient,
    Paused,
    ProtocolError,
    ReconcileResult,
    RetryLater,
    RetryScheduled,
    Revoked,
    SendBatch,
    SyncEvent,
    SyncSession,
    SyncState,
    Unauthorised,
    Wait,
    WhoAmI,
    parse_whoami,
    receive_cancel,
    receive_revoke,
    revoke_request,
    whoami_request,
)
from hm_proto_client import AsyncCloudClient, CloudClientError, PairingFailed, run_pairing_async

from . import __version__
from .cloudlink import (
    CloudLinkError,
    hostname,
    iso_from_monotonic,
    load_credentials,
    monotonic_from_iso,
    os_name,
    save_pairing,
    utc_now_iso,
    wipe_pairing,
)
from .control import CommandRefused, command, seconds_arg

log = logging.getLogger("hm_agent.cloud")

BACKLOG_REFRESH = 5.0  # how often an idle worker re-counts unsynced rows
# Seconds for one request to the backend; HALTON_METER_CLOUD_TIMEOUT overrides it
# (fault tests use a short one to provoke client timeouts).
HTTP_TIMEOUT = float(os.environ.get("HALTON_METER_CLOUD_TIMEOUT") or 30.0)
REVOKE_TIMEOUT = 10.0


def cloud_client(config: Any, base_url: str, timeout: float | None = None) -> AsyncCloudClient:
    """A client straight to the backend, or through `[cloud] proxy` when one is set."""
    proxy = (getattr(config, "cloud", None) or {}).get("proxy") or None
    return AsyncCloudClient(base_url, timeout=timeout or HTTP_TIMEOUT, proxy=proxy)


# -- shared state between components and control commands ----------------------


@dataclass
class PairingJob:
    base_url: str
    workspace: str | None
    state: str = "starting"  # starting | pending | approved | denied | expired | failed | cancelled
    code: CodeIssued | None = None
    error: str | None = None
    workspace_slug: str | None = None
    workspace_name: str | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None
    client: PairingClient | None = None  # the protocol state: its device code cancels at the backend
    saving: bool = False  # approved: the files are being written (shielded; cancel comes too late)
    finished: anyio.Event = field(default_factory=anyio.Event)  # the pairing component is done with it
    retries: list[dict[str, Any]] = field(default_factory=list)  # failed start attempts, as they happen

    def cancel(self) -> None:
        if self.active and not self.saving:
            self.move("cancelled")
        if self.client is not None:
            self.client.cancel()
        if self.scope is not None:
            self.scope.cancel()

    def move(self, state: str, error: str | None = None) -> None:
        self.state = state
        if error is not None:
            self.error = error
        self._signal()

    def note_retry(self, attempt: int, attempts: int, reason: str, delay: float) -> None:
        """A start attempt failed and another follows: `cloud connect` shows it at once."""
        self.retries.append({"attempt": attempt + 1, "of": attempts, "in_s": round(delay, 1), "reason": reason})
        self._signal()

    def _signal(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    @property
    def active(self) -> bool:
        return self.state in ("starting", "pending")


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


class CloudService:
    """What the two components and the control commands share in one daemon."""

    def __init__(self) -> None:
        self.job: PairingJob | None = None
        self.worker: CloudWorker | None = None


SERVICE = CloudService()


# -- pairing ---------------------------------------------------------------------


class PairingComponent:
    name = "cloud-pairing"

    def should_run(self, config: Any, home: Any) -> bool:
        return SERVICE.job is not None and SERVICE.job.active

    def health(self) -> dict[str, Any]:
        job = SERVICE.job
        return {"state": job.state if job else "idle"}

    async def run(self, ctx: Any) -> None:
        # A `cloud connect` that replaces an abandoned one is served by this
        # same run, so it never waits for the next supervisor tick.
        while (job := SERVICE.job) is not None and job.active:
            try:
                with anyio.CancelScope() as scope:
                    job.scope = scope
                    await self._pair(ctx, job)
                if job.active:
                    job.move("cancelled")
            finally:
                job.finished.set()

    async def _pair(self, ctx: Any, job: PairingJob) -> None:
        pairing = PairingClient(
            ctx.machine_id, hostname(), os_name(), __version__, job.workspace,
            entropy=secrets.token_bytes,
        )
        job.client = pairing

        def on_code(event: CodeIssued) -> None:
            job.code = event
            job.move("pending")

        def on_retry(attempt: int, attempts: int, event: RetryScheduled, delay: float) -> None:
            log.info("pairing with %s: attempt %d/%d failed (%s); retrying in %.1f s",
                     job.base_url, attempt, attempts, event.reason, delay)
            job.note_retry(attempt, attempts, event.reason, delay)

        try:
            async with cloud_client(ctx.config, job.base_url) as client:
                outcome = await run_pairing_async(client, pairing, on_code, on_retry=on_retry)
        except PairingFailed as exc:
            job.move("failed", str(exc))
            return
        except (CloudClientError, ProtocolError) as exc:
            job.move("failed", f"pairing with {job.base_url} failed: {exc}")
            return
        if isinstance(outcome, Approved):
            try:
                # Shielded: once approved, the files are written whole even if
                # the user presses Ctrl-C at this very moment.
                job.saving = True
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_save_approved, ctx, job, outcome)
            except (CloudLinkError, OSError) as exc:
                job.move("failed", f"approved, but the pairing could not be saved: {exc}")
                return
            job.workspace_slug = outcome.workspace_slug
            job.workspace_name = outcome.workspace_name
            if SERVICE.worker is not None:
                SERVICE.worker.reload()
            job.move("approved")
            ctx.reload_config_if_changed()
            ctx.wake()
        elif isinstance(outcome, Denied):
            job.move("denied")
        elif isinstance(outcome, Expired):
            job.move("expired")


def _save_approved(ctx: Any, job: PairingJob, ok: Approved) -> None:
    save_pairing(
        ctx.home,
        ctx.store,
        token=ok.token,
        base_url=job.base_url,
        workspace_id=ok.workspace_id,
        workspace_slug=ok.workspace_slug,
        workspace_name=ok.workspace_name,
        machine_id=ok.machine_id,
    )
    log.info("paired with workspace %s", ok.workspace_slug)


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

    # -- supervisor protocol --------------------------------------------------------

    def should_run(self, config: Any, home: Any) -> bool:
        # Paused or not: a paused SyncSession sends nothing, and resumes itself.
        return bool(config.cloud_enabled)

    def health(self) -> dict[str, Any]:
        return self.status_dict()

    async def run(self, ctx: Any) -> None:
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

    async def _load(self, ctx: Any) -> SyncSession | None:
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
        )

    async def _run(self, ctx: Any) -> None:
        while True:
            self._reload = False
            self.session = await self._load(ctx)
            if self.session is None:
                await self._sleep(BACKLOG_REFRESH * 6)
                continue
            assert self.base_url is not None
            async with cloud_client(ctx.config, self.base_url) as client:
                while not self._reload:
                    await self._turn(ctx, client, self.session)

    async def _sleep(self, seconds: float) -> None:
        with anyio.move_on_after(max(0.0, seconds)):
            await self._poke.wait()
        self._poke = anyio.Event()

    async def _turn(self, ctx: Any, client: AsyncCloudClient, session: SyncSession) -> None:
        store = ctx.store
        now = time.monotonic()
        if session.reconcile_due(now):
            await self._reconcile(ctx, client, session, now)
        backlog = await anyio.to_thread.run_sync(store.count_unsynced)
        session.note_backlog(backlog, now)
        action = session.next_action(now)
        if isinstance(action, NeedRows):
            rows = await anyio.to_thread.run_sync(store.fetch_unsynced, action.limit)
            if not rows:
                session.nothing_to_send(now)
                self._finish_waiters()
                return
            for event in session.start_batch(rows, now):
                if isinstance(event, SendBatch):
                    answer = await client.send(event.request)
                    answered_events = session.receive(answer, time.monotonic())
                    for answered in answered_events:
                        await self._handle(ctx, answered)
                    if (self._waiters and session.state in (SyncState.ACTIVE, SyncState.DEGRADED)
                            and any(isinstance(e, BatchAccepted) for e in answered_events)):
                        # A `cloud sync` is waiting: look for more rows now, not after
                        # the flush rest (a `cloud sync` that uploaded rows took 5 s longer).
                        session.sync_now(time.monotonic())
                else:
                    await self._handle(ctx, event)
            return
        if self._waiters and session.state not in (SyncState.ACTIVE, SyncState.DEGRADED):
            self._finish_waiters(session.snapshot().last_error or f"sync is {session.state.value}")
        if isinstance(action, Wait):
            await self._sleep(min(action.until - now, BACKLOG_REFRESH))
        else:
            await self._sleep(BACKLOG_REFRESH)

    def _finish_waiters(self, error: str | None = None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.want_reconcile and waiter.reconcile is None:
                waiter.reconcile = self._last_reconcile
            waiter.finish(error)

    async def _handle(self, ctx: Any, event: SyncEvent) -> None:
        store = ctx.store
        if isinstance(event, BatchAccepted):
            at = utc_now_iso()
            await anyio.to_thread.run_sync(store.mark_synced, list(event.row_ids), at)
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
        self, ctx: Any, client: AsyncCloudClient, session: SyncSession, now: float
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


def make_pairing_component() -> PairingComponent:
    return PairingComponent()


# -- control commands ---------------------------------------------------------------


def _paired_state(ctx: Any) -> dict[str, Any] | None:
    state = ctx.store.get_cloud_state()
    if not ctx.config.cloud_enabled or not state or not state.get("workspace_id"):
        return None
    return state


@command("cloud.connect.start")
async def _connect_start(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    paired = await anyio.to_thread.run_sync(_paired_state, ctx)
    if paired and paired.get("paused_reason") != "paused_unauthorised":
        raise CommandRefused(
            f"this machine is already paired with workspace {paired.get('workspace_slug')}. "
            f"To pair again, run `halton-meter cloud disconnect` first"
        )
    if SERVICE.job is not None and SERVICE.job.active:
        await cancel_job(ctx, SERVICE.job)  # a newer connect replaces an abandoned one
    base_url = str(args.get("base_url") or ctx.config.cloud_base_url).rstrip("/")
    from hm_proto_client import parse_base_url

    try:
        parse_base_url(base_url)
    except CloudClientError as exc:
        raise CommandRefused(str(exc)) from None
    job = PairingJob(base_url=base_url, workspace=args.get("workspace") or None)
    SERVICE.job = job
    ctx.wake()
    return await _code_or_progress(job, 0, bool(args.get("progress")), time.monotonic() + 35)


@command("cloud.connect.next")
async def _connect_next(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    """After `cloud.connect.start` answered a retry: wait for the next one, or the code."""
    job = SERVICE.job
    if job is None:
        raise CommandRefused("no pairing in progress: run `halton-meter cloud connect`")
    seen = int(args.get("seen") or 0)
    return await _code_or_progress(job, seen, True, time.monotonic() + 35)


async def _code_or_progress(job: PairingJob, seen: int, progress: bool, deadline: float) -> dict[str, Any]:
    """The code once there is one; with ``progress``, each failed attempt as it happens."""
    with anyio.move_on_after(max(deadline - time.monotonic(), 0)):
        while job.state == "starting" and not (progress and len(job.retries) > seen):
            await job.changed.wait()
    if job.state == "pending" and job.code is not None:
        return {
            "state": "pending",
            "user_code": job.code.user_code,
            "verification_uri": job.code.verification_uri,
            "verification_uri_complete": job.code.verification_uri_complete,
            "expires_in": round(job.code.expires_at - anyio.current_time()),
        }
    if job.state == "starting" and progress and len(job.retries) > seen:
        return {"state": "starting", "retries": job.retries[seen:], "seen": len(job.retries)}
    if job.state == "starting":
        job.cancel()
        raise CommandRefused(f"no pairing code from {job.base_url} within 35 s: check the URL and your network")
    raise CommandRefused(job.error or f"pairing {job.state}")


@command("cloud.connect.wait")
async def _connect_wait(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    job = SERVICE.job
    if job is None:
        raise CommandRefused("no pairing in progress: run `halton-meter cloud connect`")
    with anyio.move_on_after(seconds_arg(args, "wait", 25.0, 60.0)):
        while job.active:
            await job.changed.wait()
    return {
        "state": job.state,
        "error": job.error,
        "workspace_slug": job.workspace_slug,
        "workspace_name": job.workspace_name,
    }


@command("cloud.connect.cancel")
async def _connect_cancel(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    job = SERVICE.job
    if job is None:
        return {"state": "idle"}
    return await cancel_job(ctx, job)


async def cancel_job(ctx: Any, job: PairingJob) -> dict[str, Any]:
    """Stop a pairing here and at the backend, so its code can no longer be approved.

    Waits (up to 5 s) for the pairing component to let go of the job: an
    approval that arrived first is saved whole, and the answer then says
    ``approved`` (the Ctrl-C came too late). Otherwise the backend is told
    (``POST /v1/pairing/cancel``); ``backend`` says whether that worked.
    """
    job.cancel()
    if job.scope is not None and not job.finished.is_set():
        with anyio.move_on_after(5):
            await job.finished.wait()
    reply: dict[str, Any] = {"state": job.state, "backend": None,
                             "workspace_slug": job.workspace_slug, "workspace_name": job.workspace_name}
    request = job.client.cancel_request() if job.client is not None and job.state == "cancelled" else None
    if request is None:
        return reply
    try:
        with anyio.fail_after(REVOKE_TIMEOUT + 1):
            async with cloud_client(ctx.config, job.base_url, REVOKE_TIMEOUT) as client:
                outcome = receive_cancel(await client.send(request))
    except (CloudClientError, TimeoutError, OSError) as exc:
        reply["backend"] = f"not told: {exc}"
        return reply
    if isinstance(outcome, CancelAcknowledged):
        reply["backend"] = "cancelled"
    elif isinstance(outcome, RetryLater):
        reply["backend"] = f"not told: {outcome.reason}"
    else:
        reply["backend"] = f"not told: {outcome.status} {outcome.detail or outcome.error}".strip()
    log.info("pairing cancelled (backend: %s)", reply["backend"])
    return reply


@command("cloud.status")
async def _cloud_status(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(daemon_cloud_status, ctx)


def daemon_cloud_status(ctx: Any) -> dict[str, Any]:
    """`cloud status --json` as the running daemon sees it."""
    from .cloudstatus import base_status

    snap = base_status(ctx.config, ctx.store)
    worker = SERVICE.worker
    if snap["state"] != SyncState.NOT_CONFIGURED and "hint" not in snap and worker is not None and (
        worker.session is not None
    ):
        live = worker.status_dict()
        for key in ("state", "paused_reason", "last_sync_at", "last_error", "last_reconcile_at",
                    "consecutive_failures", "next_attempt_at", "quarantined_rows"):
            if key in live:
                snap[key] = live[key]
        snap["last_reconcile"] = live.get("last_reconcile")
    elif snap["state"] != SyncState.NOT_CONFIGURED and worker is not None and worker.error:
        snap["last_error"] = worker.error
    snap["daemon_running"] = True
    return snap


async def _worker(ctx: Any, wait: float = 10.0) -> CloudWorker:
    if not ctx.config.cloud_enabled:
        raise CommandRefused("this machine is not paired (NOT-CONFIGURED): run `halton-meter cloud connect`")
    ctx.wake()
    with anyio.move_on_after(wait):
        while SERVICE.worker is None or SERVICE.worker.session is None:
            if SERVICE.worker is not None and SERVICE.worker.error:
                raise CommandRefused(SERVICE.worker.error)
            await anyio.sleep(0.05)
    if SERVICE.worker is None or SERVICE.worker.session is None:
        raise CommandRefused("the cloud worker did not start; see `halton-meter status` and the daemon log")
    return SERVICE.worker


@command("cloud.sync")
async def _cloud_sync(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    worker = await _worker(ctx)
    waiter = worker.request_sync(bool(args.get("reconcile")))
    with anyio.move_on_after(seconds_arg(args, "timeout", 550.0, 600.0)):
        await waiter.done.wait()
    if not waiter.done.is_set():
        waiter.error = "still uploading; check progress with `halton-meter cloud status`"
    return {"batches": waiter.batches, "error": waiter.error, "reconcile": waiter.reconcile}


def _live_session() -> SyncSession | None:
    worker = SERVICE.worker
    return worker.session if worker is not None else None


@command("cloud.pause")
async def _cloud_pause(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    if not ctx.config.cloud_enabled:
        raise CommandRefused("this machine is not paired (NOT-CONFIGURED), so there is nothing to pause: pair it with `halton-meter cloud connect`")
    session = _live_session()
    reason = PAUSED_BY_USER
    if session is not None:
        try:
            session.pause()
        except LocalProtocolError as exc:
            raise CommandRefused(str(exc)) from None
        reason = session.paused_reason or PAUSED_BY_USER
    # Stored for restarts; without a live session (credentials unreadable) the next one restores it.
    await anyio.to_thread.run_sync(lambda: ctx.store.set_cloud_state(paused=1, paused_reason=reason))
    ctx.wake()
    return {"state": SyncState.PAUSED.value, "paused_reason": reason}


@command("cloud.resume")
async def _cloud_resume(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    """After `cloud pause` or a 401 alike: the server decides whether the token still works."""
    if not ctx.config.cloud_enabled:
        raise CommandRefused("this machine is not paired (NOT-CONFIGURED): run `halton-meter cloud connect`")
    state = await anyio.to_thread.run_sync(ctx.store.get_cloud_state) or {}
    was = state.get("paused_reason") if state.get("paused") else None
    session = _live_session()
    if session is not None:
        was = session.paused_reason or was
        if session.state is SyncState.PAUSED:
            session.resume(time.monotonic())
    await anyio.to_thread.run_sync(lambda: ctx.store.set_cloud_state(paused=0, paused_reason=None))
    if SERVICE.worker is not None:
        SERVICE.worker.poke()
    ctx.wake()
    now_state = session.state.value if session is not None else SyncState.ACTIVE.value
    return {"state": now_state, "paused_reason": None, "resumed_from": was}


@command("cloud.whoami")
async def _cloud_whoami(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    if not ctx.config.cloud_enabled:
        raise CommandRefused("this machine is not paired (NOT-CONFIGURED): run `halton-meter cloud connect`")
    try:
        creds = await anyio.to_thread.run_sync(load_credentials, ctx.home, ctx.store)
    except CloudLinkError as exc:
        raise CommandRefused(str(exc)) from None
    base_url = creds.base_url or ctx.config.cloud_base_url
    async with cloud_client(ctx.config, base_url) as client:
        answer = await client.send(whoami_request(creds.token))
    outcome = parse_whoami(answer)
    if isinstance(outcome, WhoAmI):
        return {
            "workspace_id": outcome.workspace_id,
            "workspace_slug": outcome.workspace_slug,
            "workspace_name": outcome.workspace_name,
            "machine_id": outcome.machine_id,
            "hostname": outcome.hostname,
        }
    if isinstance(outcome, Unauthorised):
        raise CommandRefused("the backend answered 401: the token was revoked. Re-run `halton-meter cloud connect`")
    if isinstance(outcome, RetryLater):
        raise CommandRefused(f"cannot reach {base_url}: {outcome.reason}. Try again later")
    raise CommandRefused(f"the backend refused whoami: {outcome.status} {outcome.detail or outcome.error}")


@command("cloud.disconnect")
async def _cloud_disconnect(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    reply = await revoke_and_wipe(ctx.home, ctx.store, ctx.config)
    if SERVICE.worker is not None:
        SERVICE.worker.reload()
    ctx.reload_config_if_changed()
    ctx.wake()
    return reply


async def revoke_and_wipe(hp: Any, store: Any, config: Any) -> dict[str, Any]:
    """`cloud disconnect`: revoke at the backend (best effort), then wipe locally, always."""
    try:
        creds = await anyio.to_thread.run_sync(load_credentials, hp, store)
    except CloudLinkError:
        creds = None
    state = (await anyio.to_thread.run_sync(store.get_cloud_state) or {}) if store is not None else {}
    if creds is None and not config.cloud_enabled and not state:
        return {"not_paired": True}
    reply: dict[str, Any] = {"revoked": False, "machine_id": state.get("machine_id"),
                             "workspace_slug": state.get("workspace_slug")}
    if creds is None:
        reply["revoke_error"] = "no readable credentials to revoke"
    else:
        base_url = creds.base_url or config.cloud_base_url
        reply["base_url"] = base_url
        try:
            async with cloud_client(config, base_url, REVOKE_TIMEOUT) as client:
                outcome = receive_revoke(await client.send(revoke_request(creds.token)))
        except CloudClientError as exc:
            outcome = None
            reply["revoke_error"] = str(exc)
        if isinstance(outcome, Revoked):
            reply["revoked"] = True
        elif outcome is not None:
            reply["revoke_error"] = getattr(outcome, "reason", None) or (
                f"{getattr(outcome, 'status', '?')} {getattr(outcome, 'detail', '')}".strip()
            )
    await anyio.to_thread.run_sync(wipe_pairing, hp, store)
    return reply
