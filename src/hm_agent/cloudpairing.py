"""``cloud connect`` in the daemon: the ``cloud-pairing`` component and its commands.

The component runs while a ``cloud connect`` is in progress: it drives a
``PairingClient`` over the async client (``run_pairing_async``), and on
approval writes the pairing files (``cloudlink.save_pairing``), reloads the
sync worker and wakes the supervisor. ``cloud.connect.start`` / ``wait`` /
``cancel`` are what the CLI calls; a cancel also tells the backend.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from hm_proto import (
    Approved,
    CancelAcknowledged,
    CodeIssued,
    Denied,
    Expired,
    PairingClient,
    ProtocolError,
    RetryLater,
    RetryScheduled,
    receive_cancel,
)
from hm_proto_client import CloudClientError, PairingFailed, run_pairing_async

from . import __version__
from .cloudlink import (
    CloudLinkError,
    hostname,
    os_name,
    save_pairing,
)
from .cloudservice import HTTP_TIMEOUT, REVOKE_TIMEOUT, SERVICE, CloudContext, cloud_client
from .config import Config
from .control import CommandRefused, command, seconds_arg

log = logging.getLogger("hm_agent.cloud")

START_TIMEOUT = 8.0
"""Seconds for one pairing start request (POST /v1/pairing/start answers at once)."""

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



# -- pairing ---------------------------------------------------------------------


class PairingComponent:
    name = "cloud-pairing"

    def should_run(self, config: Config, home: Path) -> bool:
        return SERVICE.job is not None and SERVICE.job.active

    def health(self) -> dict[str, Any]:
        job = SERVICE.job
        return {"state": job.state if job else "idle"}

    async def run(self, ctx: CloudContext) -> None:
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

    async def _pair(self, ctx: CloudContext, job: PairingJob) -> None:
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
            # Asking for a code gets its own short timeout (the long-polls pass theirs), so a
            # URL that never answers is retried, and shown, within seconds rather than 30 s.
            async with cloud_client(ctx.config, job.base_url, min(HTTP_TIMEOUT, START_TIMEOUT)) as client:
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


def _save_approved(ctx: CloudContext, job: PairingJob, ok: Approved) -> None:
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



def make_pairing_component() -> PairingComponent:
    return PairingComponent()





def _paired_state(ctx: CloudContext) -> dict[str, Any] | None:
    state = ctx.store.get_cloud_state()
    if not ctx.config.cloud_enabled or not state or not state.get("workspace_id"):
        return None
    return state


@command("cloud.connect.start")
async def _connect_start(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
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
        parsed = parse_base_url(base_url)
    except CloudClientError as exc:
        raise CommandRefused(str(exc)) from None
    if parsed.port == ctx.config.listen_port and parsed.host in ("127.0.0.1", "localhost", "::1",
                                                               ctx.config.listen_host):
        raise CommandRefused(
            f"{base_url} is this machine's metering proxy, not a cloud backend: pass the backend's URL "
            f"(e.g. http://127.0.0.1:8787 for `halton-meter-cloud serve --port 8787`)"
        )
    job = PairingJob(base_url=base_url, workspace=args.get("workspace") or None)
    SERVICE.job = job
    ctx.wake()
    return await _code_or_progress(job, 0, bool(args.get("progress")), time.monotonic() + 35)


@command("cloud.connect.next")
async def _connect_next(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
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
async def _connect_wait(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
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
async def _connect_cancel(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
    job = SERVICE.job
    if job is None:
        return {"state": "idle"}
    return await cancel_job(ctx, job)


async def cancel_job(ctx: CloudContext, job: PairingJob) -> dict[str, Any]:
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
