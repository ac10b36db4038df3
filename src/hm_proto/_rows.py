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

from ._errors import ApiError

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")

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


_REQUIRED: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "ts": (str,),
    "provider": (str,),
    "model": (str,),
    "endpoint": (str,),
    "status": (int,),
    "stream": (bool,),
    "price_version": (str,),
    "latency_ms": (int,),
}
_NULLABLE_INT = (*TOKEN_FIELDS, "ttfb_ms")
_MAX_STR = 512

ATTRIBUTION_FIELDS = ("project", "repo", "branch", "program", "os_user")
"""The optional string fields of a row that say who spent it (``tags`` is the object)."""
MAX_NAME_CHARS = 200
MAX_TAGS = 16
MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 200
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
# C0/C1 controls, line/paragraph separators and bidi overrides (they reorder a terminal line).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


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
    if not isinstance(key, str) or not _TAG_KEY_RE.match(key):
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


def _bad(field: str, what: str) -> ApiError:
    return ApiError(400, "invalid_request", f"Invalid field: {field} ({what})")


def parse_row(obj: Any, where: str = "row") -> UsageRow:
    """Validate one decoded JSON row and return it as a :class:`UsageRow`."""
    if not isinstance(obj, dict):
        raise _bad(where, "expected an object")
    for name, types in _REQUIRED.items():
        if name not in obj:
            raise ApiError(422, "missing_field", f"Field required: {where}.{name}")
        val = obj[name]
        # bool is a subclass of int: an int field must not accept true/false.
        if not isinstance(val, types) or (types == (int,) and isinstance(val, bool)):
            raise _bad(f"{where}.{name}", f"expected {types[0].__name__}")
        if isinstance(val, str) and len(val) > _MAX_STR:
            raise _bad(f"{where}.{name}", f"longer than {_MAX_STR} characters")
    for name in _NULLABLE_INT:
        val = obj.get(name)
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 0):
            raise _bad(f"{where}.{name}", "expected a non-negative integer or null")
    if not _UUID_RE.match(obj["id"]):
        raise _bad(f"{where}.id", "expected a UUID")
    if not _TS_RE.match(obj["ts"]):
        raise _bad(f"{where}.ts", "expected an RFC 3339 time")
    if obj["latency_ms"] < 0:
        raise _bad(f"{where}.latency_ms", "expected a non-negative integer")
    cost = obj.get("cost_usd")
    if cost is not None:
        if not isinstance(cost, str) or not _DECIMAL_RE.match(cost):
            raise _bad(f"{where}.cost_usd", "expected a decimal string or null")
        try:
            Decimal(cost)
        except InvalidOperation as exc:  # pragma: no cover - regex already guards
            raise _bad(f"{where}.cost_usd", "expected a decimal string") from exc
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
        id=obj["id"].lower(),
        ts=obj["ts"],
        provider=obj["provider"],
        model=obj["model"],
        endpoint=obj["endpoint"],
        status=obj["status"],
        stream=obj["stream"],
        input_tokens=obj.get("input_tokens"),
        output_tokens=obj.get("output_tokens"),
        cache_read_tokens=obj.get("cache_read_tokens"),
        cache_write_tokens=obj.get("cache_write_tokens"),
        reasoning_tokens=obj.get("reasoning_tokens"),
        cost_usd=cost,
        price_version=obj["price_version"],
        latency_ms=obj["latency_ms"],
        ttfb_ms=obj.get("ttfb_ms"),
        project=obj.get("project"),
        repo=obj.get("repo"),
        branch=obj.get("branch"),
        program=obj.get("program"),
        os_user=obj.get("os_user"),
        tags=dict(tags) if tags else None,
    )
