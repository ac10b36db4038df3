"""The local half of a cloud pairing: the files that say this machine is paired.

The sync token is stored once, encrypted: Fernet ciphertext in the
``cloud_state`` row of db.sqlite, with its key alone in ``cloud.key`` (0600).
What that protects against, and what not (docs/cloud-sync.md, "Where the
token is"): db.sqlite and cloud-credentials.json are the files that travel
(a copy for a bug report, a synced folder, a backup of the database alone);
neither holds a usable token. Someone who can read the whole home (the same
user, root) reads the key too: against them only the file modes and the
revocation on the devices page help.

Writing happens in one order, so a crash at any point leaves no half state
that the daemon would act on (config.toml is written last, and only
``[cloud] enabled = true`` there makes the worker run):

1. ``cloud.key`` — a fresh Fernet key (0600, atomic);
2. the ``cloud_state`` row in db.sqlite — the token encrypted with that key
   (``api_key_ciphertext``), workspace, machine id, hostname, paired_at;
3. ``cloud-credentials.json`` — where the token is valid: base URL,
   workspace, machine id (0600, atomic; no token since 0.2.1: an older file
   that still holds one is rewritten without it on first use);
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
from pathlib import Path
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
    _write_credentials(hp, {
        "base_url": base_url,
        "workspace_id": workspace_id,
        "workspace_slug": workspace_slug,
        "machine_id": machine_id,
        "created_at": utc_now_iso(),
    })
    update_cloud_config(hp, enabled=True, base_url=base_url, workspace_id=workspace_id)


def _write_credentials(hp: HomePaths, data: dict[str, Any]) -> None:
    write_secret(hp.cloud_credentials, (json.dumps(data, indent=2) + "\n").encode())


def _again(what: str) -> CloudLinkError:
    return CloudLinkError(f"{what}: run `halton-meter cloud connect` to pair again")


def _read_pairing_file(path: Path) -> bytes:
    try:
        return read_secret(path)
    except FileNotFoundError:
        raise _again(f"{path} is missing") from None
    except InsecureSecretFile as exc:
        raise CloudLinkError(str(exc)) from None


def load_credentials(hp: HomePaths, store: Store | None = None) -> Credentials:
    """The token (decrypted) and where it is valid; CloudLinkError says what to do if unusable."""
    raw = _read_pairing_file(hp.cloud_credentials)
    try:
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError
        meta = {k: str(data.get(k) or "") for k in ("base_url", "workspace_id", "workspace_slug")}
    except (ValueError, TypeError):
        raise _again(f"{hp.cloud_credentials} is not valid JSON") from None
    legacy = data.get("token")  # written in the clear before 0.2.1
    try:
        token = _decrypt_token(hp, store)
    except CloudLinkError:
        if not isinstance(legacy, str) or not looks_like_token(legacy):
            raise
        return Credentials(token=legacy, **meta)  # the only copy: left where it is
    if not looks_like_token(token):
        raise _again("the stored token has a bad checksum")
    if "token" in data and legacy == token:  # the encrypted copy works: keep only that one
        _write_credentials(hp, {k: v for k, v in data.items() if k != "token"})
    return Credentials(token=token, **meta)


def _decrypt_token(hp: HomePaths, store: Store | None) -> str:
    from cryptography.fernet import Fernet, InvalidToken

    key = _read_pairing_file(hp.cloud_key)
    try:
        if store is not None:
            state = store.get_cloud_state() or {}
        else:
            with Store(hp.db, readonly=True) as reader:
                state = reader.get_cloud_state() or {}
    except Exception as exc:  # StoreError, sqlite3.Error
        raise CloudLinkError(f"cannot read the token from {hp.db}: {exc}") from None
    ciphertext = state.get("api_key_ciphertext")
    if not ciphertext:
        raise _again(f"no token in {hp.db}")
    try:
        return Fernet(key.strip()).decrypt(bytes(ciphertext)).decode()
    except (InvalidToken, ValueError, TypeError):
        raise _again(f"the token in {hp.db} does not decrypt with {hp.cloud_key}") from None


def wipe_pairing(hp: HomePaths, store: Store | None) -> None:
    """Forget the pairing locally: config, cloud_state, key, credentials (in that order)."""
    update_cloud_config(hp, enabled=False)
    if store is not None:
        store.clear_cloud_state()
    remove_secret(hp.cloud_key)
    remove_secret(hp.cloud_credentials)
