"""The ``cloud.*`` control commands of a paired daemon: status, sync, pause, resume,
whoami, disconnect (``cloud connect``'s are in ``cloudpairing``).

Each asks the live SyncSession or stores what it decided; none decides itself.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from hm_proto import (
    PAUSED_BY_USER,
    LocalProtocolError,
    RetryLater,
    SyncSession,
    SyncState,
    Unauthorised,
    WhoAmI,
    parse_whoami,
    whoami_request,
)

from .cloudlink import (
    CloudLinkError,
    load_credentials,
)
from .cloudservice import SERVICE, CloudContext, cloud_client, revoke_and_wipe
from .cloudstatus import base_status
from .control import CommandRefused, command, seconds_arg

if TYPE_CHECKING:
    from .cloudworker import CloudWorker

log = logging.getLogger("hm_agent.cloud")

@command("cloud.status")
async def _cloud_status(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(daemon_cloud_status, ctx)


def daemon_cloud_status(ctx: CloudContext) -> dict[str, Any]:
    """`cloud status --json` as the running daemon sees it."""
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
    from .bodysync import STATE

    snap["bodies"]["workspace_accepts"] = STATE.get("accepted")
    return snap


async def _worker(ctx: CloudContext, wait: float = 10.0) -> CloudWorker:
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
async def _cloud_sync(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
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
async def _cloud_pause(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
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
async def _cloud_resume(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
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
async def _cloud_whoami(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
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
            "retention_days": outcome.retention_days,
        }
    if isinstance(outcome, Unauthorised):
        raise CommandRefused("the backend answered 401: the token was revoked. Re-run `halton-meter cloud connect`")
    if isinstance(outcome, RetryLater):
        raise CommandRefused(f"cannot reach {base_url}: {outcome.reason}. Try again later")
    raise CommandRefused(f"the backend refused whoami: {outcome.status} {outcome.detail or outcome.error}")


@command("cloud.disconnect")
async def _cloud_disconnect(ctx: CloudContext, args: dict[str, Any]) -> dict[str, Any]:
    reply = await revoke_and_wipe(ctx.home, ctx.store, ctx.config)
    if SERVICE.worker is not None:
        SERVICE.worker.reload()
    ctx.reload_config_if_changed()
    ctx.wake()
    return reply
