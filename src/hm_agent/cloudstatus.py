"""`cloud status` and the local half of `cloud disconnect`, with or without a daemon.

The running daemon knows the live state (its worker's SyncSession); when it
is not running, the state comes from config.toml and the cloud_state row,
and says so. The shape is documented in docs/cloud-sync.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# paused_reason codes (kept as they are in --json) → what they mean and what to do.
PAUSED_REASONS = {
    "user": "paused by you; `halton-meter cloud resume` restarts the upload",
    "paused_by_user": "paused by you; `halton-meter cloud resume` restarts the upload",
    "paused_unauthorised": "the workspace revoked this machine's token; "
    "pair it again with `halton-meter cloud connect`",
}


def explain_paused(reason: str) -> str:
    return PAUSED_REASONS.get(reason, reason)


NOT_RUNNING_HINT = "The daemon is not running, so nothing is syncing: start it with `halton-meter start`."


def base_status(config: Any, store: Any, problem: str | None = None) -> dict[str, Any]:
    """The status fields that the files alone can tell.

    ``problem`` (or any failure reading ``store``) makes the database's
    fields null and the state DEGRADED (when paired), with the problem as
    ``last_error`` and its fix as ``hint``: the shape never changes.
    """
    state: dict[str, Any] = {}
    unsynced: int | None = 0
    quarantined: int | None = 0
    if store is not None and problem is None:
        try:
            state = store.get_cloud_state() or {}
            unsynced = store.count_unsynced()
            quarantined = store.count_quarantined()
        except Exception as exc:
            from .store import unreadable

            problem = unreadable(store.path, exc)
            state = {}
    if problem is not None:
        unsynced = quarantined = None
    snap: dict[str, Any] = {
        "state": "NOT-CONFIGURED",
        "enabled": bool(config.cloud_enabled),
        "paused_reason": None,
        "workspace_id": state.get("workspace_id"),
        "workspace_slug": state.get("workspace_slug"),
        "workspace_name": state.get("workspace_name"),
        "machine_id": state.get("machine_id"),
        "hostname": state.get("hostname"),
        "base_url": config.cloud_base_url if config.cloud_enabled else None,
        "paired_at": state.get("paired_at"),
        "last_sync_at": state.get("last_sync_at"),
        "unsynced_rows": unsynced,
        "quarantined_rows": quarantined,
        "last_reconcile_at": state.get("last_reconcile_at"),
        "last_error": state.get("last_error"),
        "daemon_running": False,
        # [capture] bodies and, with the daemon running, whether the workspace accepts them
        # (whoami's accept_bodies; null: not asked yet).
        "bodies": {"mode": getattr(getattr(config, "bodies", None), "mode", "off"), "workspace_accepts": None},
    }
    if problem is not None:
        snap["last_error"] = snap["hint"] = problem
    if not config.cloud_enabled:
        return snap
    if problem is not None:
        snap["state"] = "DEGRADED"  # nothing can be read, so nothing uploads
    elif state.get("paused"):
        snap["state"] = "PAUSED"
        snap["paused_reason"] = state.get("paused_reason") or "user"
    else:
        snap["state"] = "ACTIVE"
    return snap


def cloud_status(home: Path) -> dict[str, Any]:
    """`cloud status --json`: the daemon's live view, or the files' when it is down."""
    from .control import ControlError, DaemonNotRunning, control_call

    try:
        return control_call(home, "cloud.status", timeout=5.0)
    except (DaemonNotRunning, ControlError):
        return offline_status(home)


def offline_status(home: Path) -> dict[str, Any]:
    """The cloud state from config.toml and the cloud_state row, no daemon involved. Never raises."""
    from types import SimpleNamespace

    from .config import ConfigError, load_config
    from .home import paths
    from .store import Store, StoreError

    hp = paths(home)
    try:
        config: Any = load_config(home)
    except ConfigError as exc:
        # Unknown whether it is paired; the daemon cannot start either, so nothing uploads.
        snap = base_status(SimpleNamespace(cloud_enabled=False, cloud_base_url=None), None, str(exc))
        snap["state"] = "DEGRADED"
        return snap
    store: Any = None
    problem: str | None = None
    if hp.db.exists():
        try:
            store = Store(hp.db, readonly=True)
        except StoreError as exc:
            problem = str(exc)
    try:
        snap = base_status(config, store, problem)
    finally:
        if store is not None:
            store.close()
    if snap["state"] == "ACTIVE":
        # Paired but no daemon: rows accumulate and nothing uploads them.
        snap["state"] = "DEGRADED"
        snap["last_error"] = "daemon not running"
    if snap["state"] != "NOT-CONFIGURED" and "hint" not in snap:
        snap["hint"] = NOT_RUNNING_HINT
    return snap


def local_disconnect(home: Path) -> dict[str, Any]:
    """`cloud disconnect` with no daemon: revoke (best effort) and wipe, in this process."""
    import anyio

    from .cloudservice import revoke_and_wipe
    from .config import load_config
    from .home import paths
    from .store import Store, StoreError

    config = load_config(home)
    hp = paths(home)
    try:
        store = Store(hp.db)
    except StoreError:
        # A damaged database must not keep a lost laptop's token alive: revoke and
        # wipe the files anyway (the cloud_state row goes with the database).
        return anyio.run(revoke_and_wipe, hp, None, config)
    with store:
        return anyio.run(revoke_and_wipe, hp, store, config)
