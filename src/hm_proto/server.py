"""What a backend needs from hm_proto, apart from the client surface.

Codes and tokens (generated with injected ``entropy``, stored as hashes) and
the validation of uploaded rows (the api.md bounds and the checks behind them). A client embedder never needs this module.
"""

from __future__ import annotations

from ._codes import (
    DEVICE_CODE_BYTES,
    READ_KEY_PREFIX,
    TOKEN_PREFIX,
    USER_CODE_ALPHABET,
    USER_CODE_LENGTH,
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
from ._errors import ApiError
from ._rows import (
    ATTRIBUTION_FIELDS,
    MAX_COST_DECIMALS,
    MAX_COST_USD,
    MAX_DURATION_MS,
    MAX_STATUS,
    MAX_TAGS,
    MAX_TEXT,
    MAX_TOKENS,
    MIN_STATUS,
    TOKEN_FIELDS,
    UsageRow,
    check_int,
    check_text,
    is_timestamp,
    is_uuid,
    parse_row,
    tag_problem,
)

__all__ = [
    "ATTRIBUTION_FIELDS",
    "DEVICE_CODE_BYTES",
    "MAX_COST_DECIMALS",
    "MAX_COST_USD",
    "MAX_DURATION_MS",
    "MAX_STATUS",
    "MAX_TAGS",
    "MAX_TEXT",
    "MAX_TOKENS",
    "MIN_STATUS",
    "READ_KEY_PREFIX",
    "TOKEN_FIELDS",
    "TOKEN_PREFIX",
    "USER_CODE_ALPHABET",
    "USER_CODE_LENGTH",
    "ApiError",
    "Entropy",
    "UsageRow",
    "check_int",
    "check_text",
    "format_user_code",
    "generate_device_code",
    "generate_token",
    "generate_user_code",
    "hash_token",
    "is_timestamp",
    "is_uuid",
    "looks_like_token",
    "normalize_user_code",
    "parse_row",
    "tag_problem",
    "token_matches",
]
