"""Ready-made clients for hm_proto: ``pip install 'halton-meter-proto[client]'``.

``AsyncCloudClient`` (anyio: asyncio or trio) and ``SyncCloudClient``
(blocking sockets, thread-safe) take an hm_proto ``Request`` and give back a
``Response`` or a ``TransportFailure``, ready to feed to the state machine
that made the request. ``run_pairing_async`` / ``run_pairing`` drive a
``PairingClient`` to its end; ``run_sync_async`` / ``run_sync`` drive a
``SyncSession`` against a ``RowStore`` (``SQLiteRowStore`` is a ready one). They connect straight to the base URL (or
through an explicit ``proxy`` with CONNECT), never through HTTPS_PROXY.

The blocking client is generated from the async source by
``scripts/unasync.py``; a test fails when the two drift.
"""

from __future__ import annotations

from ._async.client import AsyncCloudClient
from ._async.pairing import (
    OnCode,
    OnEvent,
    PairingResult,
    run_pairing_async,
)
from ._async.sync_loop import OnSyncEvent, run_sync_async, utc_today
from ._base import (
    DEFAULT_TIMEOUT,
    BadBaseUrl,
    BaseUrl,
    CloudClientError,
    PairingFailed,
    make_ssl_context,
    parse_base_url,
    parse_proxy_url,
)
from ._store import RowStore, SQLiteRowStore
from ._sync.client import SyncCloudClient
from ._sync.pairing import run_pairing
from ._sync.sync_loop import run_sync

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncCloudClient",
    "BadBaseUrl",
    "BaseUrl",
    "CloudClientError",
    "OnCode",
    "OnEvent",
    "PairingFailed",
    "OnSyncEvent",
    "PairingResult",
    "RowStore",
    "SQLiteRowStore",
    "SyncCloudClient",
    "make_ssl_context",
    "parse_base_url",
    "parse_proxy_url",
    "run_pairing",
    "run_pairing_async",
    "run_sync",
    "run_sync_async",
    "utc_today",
]
