"""hm_proto: the sans-IO protocol core of Halton Meter.

Pure state objects in the style of h11: they take bytes or events and
``now`` (seconds, any monotonic origin) and hand back requests, events and
``next_deadline()``. No clock, no randomness, no I/O: time and entropy are
parameters, so the same objects run under asyncio, trio, threads or a
library user's own event loop.
"""

from __future__ import annotations

from ._codes import (
    USER_CODE_ALPHABET,
    Entropy,
    format_user_code,
    generate_device_code,
    generate_token,
    generate_user_code,
    hash_token,
    looks_like_token,
    normalize_user_code,
    token_matches,
)
from ._errors import ApiError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._http import Request, Response, TransportFailure
from ._rows import UsageRow, parse_row

__all__ = [
    "USER_CODE_ALPHABET",
    "ApiError",
    "Entropy",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "TransportFailure",
    "UsageRow",
    "format_user_code",
    "generate_device_code",
    "generate_token",
    "generate_user_code",
    "hash_token",
    "looks_like_token",
    "normalize_user_code",
    "parse_row",
    "token_matches",
]

__version__ = "0.2.1"
