"""The local half of a cloud pairing: the files that say this machine is paired.

Writing happens in one order, so a crash at any point leaves no half state
that the daemon would act on (config.toml is written last, and only
``[cloud] enabled = true`` there makes the worker run):

1. ``cloud-credentials.json`` — the raw ``hm_sync_…`` token (0600, atomic);
2. ``cloud.key`` — a fresh Fernet key (0600, atomic);
3. the ``cloud_state`` row in db.sqlite — the token encrypted with that key
   (``api_key_ciphertext``), workspace, machine id, hostname, paired_at;
4. ``config.toml`` ``[cloud]`` — ``enabled = true``, ``base_url``, ``workspace_id``
   (rewritten with tomlkit so the user's comments survive).

Wiping is the reverse: config first (the worker stops wanting to run), then
the row, then the key and the credentials.
"""

from __future__ import annotations

import json
import platform
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hm_proto import looks_like_token

from .config import update_cloud_config
from .home import HomePaths
from .secretfiles import InsecureSecretFile, read_secret, remove_secret, write_secret
from .store import Store


class CloudLinkError(Exception):
    """The pairing files cannot be used; the message says how to fix it."""


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def iso_from(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def monotonic_from_iso(ts: str | None, now_mono: float, now_wall: float) -> float | None:
    """A stored wall-clock time on the monotonic clock: now, minus its age."""
    wall = parse_iso(ts)
    return None if wall is None else now_mono - (now_wall - wall)


def iso_from_monotonic(at: float | None, now_mono: float, now_wall: float) -> str | None:
    """A monotonic time (SyncSession's) as a wall-clock ISO string, by its distance from now."""
    if at is None or at != at or at in (float("inf"), float("-inf")):
        return None
    return iso_from(now_wall - (now_mono - at))


def hostname() -> str:
    return socket.gethostname()


def os_name() -> str:
    return f"{platform.system().lower()} {platform.release()}".strip()


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str
    base_url: str
    workspace_id: str
    workspace_slug: str

    def __repr__(self) -> str:  # the token never reaches a log line
        return f"Credentials(token='hm_sync_…', base_url={self.base_url!r}, workspace={self.workspace_slug!r})"


def save_pairing(
    hp: HomePaths,
    store: Store,
    *,
    token: str,
    base_url: str,
    workspace_id: str,
    workspace_slug: str,
    workspace_name: str,
    machine_id: str,
) -> None:
    """Write the four pieces of a pairing, in the crash-safe order above."""
    from cryptography.fernet import Fernet

    if not looks_like_token(token):
        raise CloudLinkError("the backend returned a token with a bad checksum; run `halton-meter cloud connect` again")
    creds = {
        "token": token,
        "base_url": base_url,
        "workspace_id": workspace_id,
        "workspace_slug": workspace_slug,
        "machine_id": machine_id,
        "created_at": utc_now_iso(),
    }
    write_secret(hp.cloud_credentials, (json.dumps(creds, indent=2) + "\n").encode())
    key = Fernet.generate_key()
    write_secret(hp.cloud_key, key)
    store.set_cloud_state(
        workspace_id=workspace_id,
        workspace_slug=workspace_slug,
        workspace_name=workspace_name,
        machine_id=machine_id,
        hostname=hostname(),
        api_key_ciphertext=Fernet(key).encrypt(token.encode()),
        paired_at=utc_now_iso(),
        paused=0,
        paused_reason=None,
        last_sync_at=None,
        last_reconcile_at=None,
        last_error=None,
    )
    update_cloud_config(hp, enabled=True, base_url=base_url, workspace_id=workspace_id)


def load_credentials(hp: HomePaths) -> Credentials:
    """The token and where it is valid; CloudLinkError says what to do if unusable."""
    try:
        raw = read_secret(hp.cloud_credentials)
    except FileNotFoundError:
        raise CloudLinkError(
            f"{hp.cloud_credentials} is missing: run `halton-meter cloud connect` to pair again"
        ) from None
    except InsecureSecretFile as exc:
        raise CloudLinkError(str(exc)) from None
    try:
        data: Any = json.loads(raw)
        token = str(data["token"])
        creds = Credentials(
            token=token,
            base_url=str(data.get("base_url") or ""),
            workspace_id=str(data.get("workspace_id") or ""),
            workspace_slug=str(data.get("workspace_slug") or ""),
        )
    except (ValueError, KeyError, TypeError):
        raise CloudLinkError(
            f"{hp.cloud_credentials} is not valid JSON with a token: run `halton-meter cloud connect` again"
        ) from None
    if not looks_like_token(creds.token):
        raise CloudLinkError(
            f"{hp.cloud_credentials} holds no valid hm_sync_ token: run `halton-meter cloud connect` again"
        )
    return creds


def wipe_pairing(hp: HomePaths, store: Store | None) -> None:
    """Forget the pairing locally: config, cloud_state, key, credentials (in that order)."""
    update_cloud_config(hp, enabled=False)
    if store is not None:
        store.clear_cloud_state()
    remove_secret(hp.cloud_key)
    remove_secret(hp.cloud_credentials)
