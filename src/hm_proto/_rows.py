"""The usage row: one LLM call, exactly the ``Row`` object of api.md.

The daemon builds a :class:`UsageRow` at capture time and stores its JSON
(``to_json()``) beside the indexed columns, so building an upload body is a
join of stored bytes (see ``BatchBuilder``). The backend validates incoming
rows with :func:`parse_row`, which raises :class:`ApiError` (400 for wrong
types, 422 for a missing field) with a detail that names the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from ._dates import parse_date
from ._errors import ApiError

# Every pattern is used with fullmatch: "$" would also accept a trailing newline.
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TS_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:Z|[+-](\d{2}):(\d{2}))",
    re.ASCII,
)
_COST_RE = re.compile(r"\d{1,7}(?:\.\d{1,12})?", re.ASCII)
# C0/C1 controls, DEL, line/paragraph separators and bidi overrides: no stored
# text carries them (PostgreSQL refuses NUL outright, terminals act on the rest,
# bidi overrides reorder a line).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# The bounds of api.md ("Bounds of a Row"). Chosen so that no legal data can
# overflow an aggregate (see hm_cloud.store) and far above any real call.
MAX_TOKENS = 10**12
MAX_COST_USD = Decimal(10**6)
MAX_COST_DECIMALS = 12
MAX_DURATION_MS = 86_400_000  # latency_ms and ttfb_ms: one day
MIN_STATUS, MAX_STATUS = 100, 599
MAX_TEXT = 512

TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One metered call. No prompt, completion or key is ever part of it."""

    id: str
    ts: str
    provider: str
    model: str
    endpoint: str
    status: int
    stream: bool
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: str | None
    price_version: str
    latency_ms: int
    ttfb_ms: int | None
    # Attribution (optional; older daemons send none of these): names, never paths.
    project: str | None = None
    repo: str | None = None
    branch: str | None = None
    program: str | None = None
    os_user: str | None = None
    tags: dict[str, str] | None = None

    @property
    def day(self) -> str:
        """The UTC date of ``ts`` (``YYYY-MM-DD``), the unit of reconcile."""
        return self.ts[:10]

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every value, and this runs once per call captured.
        return {name: getattr(self, name) for name in _ROW_FIELDS}

    def to_json(self) -> bytes:
        """Compact JSON in field order: the stored and uploaded form."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_ROW_FIELDS = tuple(f.name for f in fields(UsageRow))


ATTRIBUTION_FIELDS = ("project", "repo", "branch", "program", "os_user")
"""The optional string fields of a row that say who spent it (``tags`` is the object)."""
MAX_NAME_CHARS = 200
MAX_TAGS = 16
MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 200
_TAG_KEY_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a usable attribution name (project, repo, branch, ...), or None."""
    if not isinstance(value, str):
        return "expected a string or null"
    if not value or len(value) > MAX_NAME_CHARS:
        return f"expected 1-{MAX_NAME_CHARS} characters"
    if _CONTROL_RE.search(value):
        return "control characters are not allowed"
    return None


def tag_problem(key: object, value: object) -> str | None:
    """Why ``key = value`` is not a usable tag, or None."""
    if not isinstance(key, str) or not _TAG_KEY_RE.fullmatch(key):
        return f"a tag key is 1-{MAX_TAG_KEY_CHARS} of A-Z a-z 0-9 _ . : / -"
    if not isinstance(value, str) or len(value) > MAX_TAG_VALUE_CHARS:
        return f"a tag value is a string of at most {MAX_TAG_VALUE_CHARS} characters"
    if _CONTROL_RE.search(value):
        return "control characters are not allowed"
    return None


def parse_tags(text: str) -> tuple[dict[str, str], list[str]]:
    """``key=value,key=value`` (a header or environment variable) as tags, and what was dropped.

    Bad pairs are dropped one by one (never the request): each problem is one
    line in the second item. Past :data:`MAX_TAGS` the rest are dropped.
    """
    tags: dict[str, str] = {}
    problems: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        why = "expected key=value" if not eq else tag_problem(key, value)
        if why is None and len(tags) >= MAX_TAGS and key not in tags:
            why = f"more than {MAX_TAGS} tags"
        if why is not None:
            problems.append(f"{key[:MAX_TAG_KEY_CHARS]!r}: {why}")
            continue
        tags[key] = value
    return tags, problems


_TEXT_FIELDS = ("provider", "model", "endpoint", "price_version")
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    **{name: (0, MAX_TOKENS) for name in TOKEN_FIELDS},
    "status": (MIN_STATUS, MAX_STATUS),
    "latency_ms": (0, MAX_DURATION_MS),
    "ttfb_ms": (0, MAX_DURATION_MS),
}
_NULLABLE = frozenset((*TOKEN_FIELDS, "ttfb_ms", "cost_usd", *ATTRIBUTION_FIELDS, "tags"))


def _bad(field: str, what: str) -> ApiError:
    return ApiError(400, "invalid_request", f"Invalid field: {field} ({what})")


def check_text(value: object, field: str, max_len: int = MAX_TEXT) -> str:
    """``value`` if it is a string of at most ``max_len`` characters and no control characters."""
    if not isinstance(value, str):
        raise _bad(field, "expected a string")
    if len(value) > max_len:
        raise _bad(field, f"longer than {max_len} characters")
    if _CONTROL_RE.search(value):
        raise _bad(field, "contains control characters")
    return value


def check_int(value: object, field: str, low: int, high: int, or_null: bool = False) -> int:
    """``value`` if it is an integer (not a bool) with ``low <= value <= high``."""
    what = f"expected an integer from {low} to {high}" + (" or null" if or_null else "")
    # bool is a subclass of int: an int field must not accept true/false.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(field, what)
    if not low <= value <= high:
        raise _bad(field, f"{what}, got {value}")
    return value


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def is_timestamp(value: object) -> bool:
    """An RFC 3339 time with a real date, hour 00-23, minute and second 00-59."""
    match = _TS_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return False
    day, hour, minute, second, off_h, off_m = match.groups()
    try:
        parse_date(day)
    except ValueError:
        return False
    return (
        int(hour) <= 23
        and int(minute) <= 59
        and int(second) <= 59
        and (off_h is None or (int(off_h) <= 23 and int(off_m) <= 59))
    )


def check_cost(value: object, field: str) -> str:
    """A decimal string 0 <= c <= 10^6 with at most 12 decimal places."""
    what = f"expected a decimal string from 0 to {MAX_COST_USD} with at most {MAX_COST_DECIMALS} decimals, or null"
    if not isinstance(value, str) or _COST_RE.fullmatch(value) is None:
        raise _bad(field, what)
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already guards
        raise _bad(field, what) from exc
    if amount > MAX_COST_USD:
        raise _bad(field, what)
    return value


def _int(obj: dict[str, Any], name: str, where: str) -> int:
    low, high = _INT_BOUNDS[name]
    return check_int(obj.get(name), f"{where}.{name}", low, high, or_null=name in _NULLABLE)


def _opt_int(obj: dict[str, Any], name: str, where: str) -> int | None:
    return None if obj.get(name) is None else _int(obj, name, where)


def parse_row(obj: Any, where: str = "row") -> UsageRow:
    """Validate one decoded JSON row against the api.md bounds and return it.

    Raises :class:`ApiError`: 422 ``missing_field`` for an absent required
    field, 400 ``invalid_request`` for any wrong type or out-of-bounds value;
    the detail names the field as ``<where>.<field>`` (``rows[3].cost_usd``).
    """
    if not isinstance(obj, dict):
        raise _bad(where, "expected an object")
    for name in _ROW_FIELDS:
        if name not in obj and name not in _NULLABLE:
            raise ApiError(422, "missing_field", f"Field required: {where}.{name}")
    row_id = obj["id"]
    if not is_uuid(row_id):
        raise _bad(f"{where}.id", "expected a UUID")
    if not is_timestamp(obj["ts"]):
        raise _bad(f"{where}.ts", "expected an RFC 3339 time such as 2026-11-24T10:00:00.000Z")
    for name in _TEXT_FIELDS:
        check_text(obj[name], f"{where}.{name}")
    if not isinstance(obj["stream"], bool):
        raise _bad(f"{where}.stream", "expected true or false")
    cost = obj.get("cost_usd")
    if cost is not None:
        check_cost(cost, f"{where}.cost_usd")
    for name in ATTRIBUTION_FIELDS:
        val = obj.get(name)
        if val is not None and (why := name_problem(val)) is not None:
            raise _bad(f"{where}.{name}", why)
    tags = obj.get("tags")
    if tags is not None:
        if not isinstance(tags, dict):
            raise _bad(f"{where}.tags", "expected an object of strings or null")
        if len(tags) > MAX_TAGS:
            raise _bad(f"{where}.tags", f"at most {MAX_TAGS} tags")
        for key, value in tags.items():
            if (why := tag_problem(key, value)) is not None:
                raise _bad(f"{where}.tags", why)
    return UsageRow(
        id=row_id.lower(),
        ts=obj["ts"],
        provider=obj["provider"],
        model=obj["model"],
        endpoint=obj["endpoint"],
        status=_int(obj, "status", where),
        stream=obj["stream"],
        input_tokens=_opt_int(obj, "input_tokens", where),
        output_tokens=_opt_int(obj, "output_tokens", where),
        cache_read_tokens=_opt_int(obj, "cache_read_tokens", where),
        cache_write_tokens=_opt_int(obj, "cache_write_tokens", where),
        reasoning_tokens=_opt_int(obj, "reasoning_tokens", where),
        cost_usd=cost,
        price_version=obj["price_version"],
        latency_ms=_int(obj, "latency_ms", where),
        ttfb_ms=_opt_int(obj, "ttfb_ms", where),
        project=obj.get("project"),
        repo=obj.get("repo"),
        branch=obj.get("branch"),
        program=obj.get("program"),
        os_user=obj.get("os_user"),
        tags=dict(tags) if tags else None,
    )
