"""Cloud clients: thin byte pumps between hm_proto state machines and the network.

``SyncCloudClient`` (blocking sockets) and ``AsyncCloudClient`` (anyio: asyncio
or trio) both take an hm_proto ``Request`` and give back a ``Response`` or a
``TransportFailure`` (kind ``connect``, ``timeout`` or ``broken``), ready to
feed to the state machine that made the request. They connect straight to the
base URL and never through HTTPS_PROXY/HTTP_PROXY (see ``_base``).
"""

from __future__ import annotations

from ._async import AsyncCloudClient
from ._base import BadBaseUrl, BaseUrl, CloudClientError, make_ssl_context, parse_base_url
from ._drivers import PairingFailed, PairingResult, run_pairing, run_pairing_async
from ._sync import SyncCloudClient

__all__ = [
    "AsyncCloudClient",
    "BadBaseUrl",
    "BaseUrl",
    "CloudClientError",
    "PairingFailed",
    "PairingResult",
    "SyncCloudClient",
    "make_ssl_context",
    "parse_base_url",
    "run_pairing",
    "run_pairing_async",
]
