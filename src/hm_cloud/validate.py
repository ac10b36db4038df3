"""Checks of request fields that the JSON API and the pages share.

Row validation (the api.md bounds of a usage Row) lives in
``hm_proto.server.parse_row``; this module holds what is specific to the
backend's other inputs. Every pattern is used with ``fullmatch``: ``$``
would also accept a trailing newline.
"""

from __future__ import annotations

import re
from typing import Any

from hm_proto.server import ApiError, check_text

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MAX_FIELD_CHARS = 255  # hostname, os, agent_version, device_code, workspace


def column_chars(column: Any) -> int:
    """The length of a String(n) column: the most characters a value stored there may have."""
    return int(column.type.length)


MAX_ID = 2**31 - 1  # an Integer column (users.id, audit_log.id) on PostgreSQL: a bigger one is a DataError


def small_int(raw: str | None, limit: int = MAX_ID) -> int | None:
    """``raw`` as an integer 0..``limit`` written in ASCII digits, else None.

    ``str.isdigit`` alone also accepts digits ``int`` refuses ("²", "①"): a
    ValueError (500) from a query string or a form; and an id past PostgreSQL's
    32-bit INTEGER fails the query (500) where SQLite simply finds nothing."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        return None
    value = int(raw)
    return value if value <= limit else None


def field(
    obj: dict[str, Any], name: str, kind: type, nullable: bool = False, required: bool = True,
    max_len: int = MAX_FIELD_CHARS,
) -> Any:
    """``obj[name]`` checked: 422 when a required field is absent, 400 for a wrong type;
    strings are at most ``max_len`` (255) characters without control characters. A string
    stored in a column must fit it: PostgreSQL refuses a longer value (a 500)."""
    if name not in obj:
        if required:
            raise ApiError(422, "missing_field", f"Field required: {name}")
        return None
    val = obj[name]
    if val is None and nullable:
        return None
    if kind is str:
        return check_text(val, name, max_len)
    if not isinstance(val, kind) or (kind is int and isinstance(val, bool)):
        raise ApiError(400, "invalid_request", f"Invalid field: {name} (expected {kind.__name__})")
    return val
