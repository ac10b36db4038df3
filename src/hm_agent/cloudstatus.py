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


def base_status(config: Any, store: Any) -> dict[str, Any]:
    """The status fields that the files alone can tell."""
    state = (store.get_cloud_state() if store is not None else None) or {}
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
        "unsynced_rows": store.count_unsynced() if store is not None else 0,
        "quarantined_rows": store.count_quarantined() if store is not None else 0,
        "last_reconcile_at": state.get("last_reconcile_at"),
        "last_error": state.get("last_error"),
        "daemon_running": False,
    }
    if not config.cloud_enabled:
        return snap
    if state.get("paused"):
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
    """The cloud state from config.toml and the cloud_state row, no daemon involved."""
    from .config import load_config
    from .home import paths
    from .store import Store

    config = load_config(home)
    hp = paths(home)
    store = Store(hp.db, readonly=True) if hp.db.exists() else None
    try:
        snap = base_status(config, store)
    finally:
        if store is not None:
            store.close()
    if snap["state"] == "ACTIVE":
        # Paired but no daemon: rows accumulate and nothing uploads them.
        snap["state"] = "DEGRADED"
        snap["last_error"] = "daemon not running"
    if snap["state"] != "NOT-CONFIGURED":
        snap["hint"] = NOT_RUNNING_HINT
    return snap


def local_disconnect(home: Path) -> dict[str, Any]:
    """`cloud disconnect` with no daemon: revoke (best effort) and wipe, in this process."""
    import anyio

    from .cloudworker import revoke_and_wipe
    from .config import load_config
    from .home import paths
    from .store import Store

    config = load_config(home)
    hp = paths(home)
    with Store(hp.db) as store:
        return anyio.run(revoke_and_wipe, hp, store, config)
