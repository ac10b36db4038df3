"""What the cloud components and the ``cloud.*`` control commands share.

- :class:`CloudContext`: the part of the daemon they use (typed; the
  daemon's ``DaemonContext`` provides it);
- :data:`SERVICE`: the one pairing job and the one sync worker of this daemon;
- :func:`cloud_client`: a client straight to the backend, or through
  ``[cloud] proxy`` (``AsyncCloudClient`` ignores HTTPS_PROXY, so sync
  traffic never passes through, nor is captured by, our own proxy);
- :func:`revoke_and_wipe`: ``cloud disconnect``, with or without a daemon.

The modules: ``cloudpairing`` (the pairing component and ``cloud connect``),
``cloudworker`` (the sync worker), ``cloudcommands`` (status, sync, pause,
resume, whoami, disconnect) and ``cloudstatus`` (status without a daemon).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from hm_proto import (
    Revoked,
    receive_revoke,
    revoke_request,
)
from hm_proto_client import AsyncCloudClient, CloudClientError

from .cloudlink import (
    CloudLinkError,
    load_credentials,
    wipe_pairing,
)
from .config import Config
from .home import HomePaths
from .store import Store

if TYPE_CHECKING:
    from .cloudpairing import PairingJob
    from .cloudworker import CloudWorker

log = logging.getLogger("hm_agent.cloud")

# Seconds for one request to the backend; HALTON_METER_CLOUD_TIMEOUT overrides it
# (fault tests use a short one to provoke client timeouts).
HTTP_TIMEOUT = float(os.environ.get("HALTON_METER_CLOUD_TIMEOUT") or 30.0)
REVOKE_TIMEOUT = 10.0


def cloud_client(config: Config, base_url: str, timeout: float | None = None) -> AsyncCloudClient:
    """A client straight to the backend, or through `[cloud] proxy` when one is set."""
    proxy = (getattr(config, "cloud", None) or {}).get("proxy") or None
    return AsyncCloudClient(base_url, timeout=timeout or HTTP_TIMEOUT, proxy=proxy)



class CloudContext(Protocol):
    """What the cloud components and commands use of the daemon (``DaemonContext``)."""

    home: HomePaths
    config: Config
    store: Store
    machine_id: str

    def wake(self) -> None: ...

    def reload_config_if_changed(self) -> None: ...


class CloudService:
    """What the two components and the control commands share in one daemon."""

    def __init__(self) -> None:
        self.job: PairingJob | None = None
        self.worker: CloudWorker | None = None


SERVICE = CloudService()



async def revoke_and_wipe(hp: HomePaths, store: Store | None, config: Config) -> dict[str, Any]:
    """`cloud disconnect`: revoke at the backend (best effort), then wipe locally, always."""
    try:
        creds = await anyio.to_thread.run_sync(load_credentials, hp, store)
    except CloudLinkError:
        creds = None
    stored = await anyio.to_thread.run_sync(store.get_cloud_state) if store is not None else None
    state = stored or {}
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
