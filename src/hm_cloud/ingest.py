"""A batch's rows validated and turned into insert tuples in one pass.

``batch_values`` checks each decoded row with a fast, strict test written for
the common case and builds its tuple (``usage_rows`` column order) at once.
A row the fast test does not accept, for any reason, goes through
``hm_proto.server.parse_row``: that either raises the exact api.md error
(naming ``rows[i].field``) or accepts the row. So the fast test may refuse
more than parse_row, never less, and validation is exactly parse_row's
(tests/test_cloud_ingest_fast.py compares both on valid and hostile rows).

``fast_batch`` goes one step earlier: it decodes the whole body with msgspec
against typed structs whose constraints are the same strict test (types,
patterns, lengths, bounds, no unknown fields), in C, straight from the bytes.
Any body it does not accept whole, for any reason, returns None and takes the
orjson + ``batch_values`` path above, which gives the exact errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from hm_proto import is_valid_date
from hm_proto.server import MAX_DURATION_MS, MAX_TAGS, MAX_TOKENS, UsageRow, parse_row, tag_problem

from .db import usage_rows

NANOS = Decimal(1_000_000_000)
COLUMNS = tuple(c.name for c in usage_rows.columns)
Values = tuple[Any, ...]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
# Hours 00-23, minutes and seconds 00-59, offsets up to 23:59: what is_timestamp checks.
_TS = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
).fullmatch
# Up to 6 integer digits: below 10**6 whatever the decimals (7 digits go the slow way).
_COST = re.compile(r"\d{1,6}(?:\.\d{1,12})?", re.ASCII).fullmatch
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]").search
_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
_NAMES = ("project", "repo", "branch", "program", "os_user")
MAX_MS = MAX_DURATION_MS
_days: dict[str, bool] = {}


def _real_day(day: str) -> bool:
    known = _days.get(day)
    if known is None:
        known = is_valid_date(day)
        if len(_days) > 8192:  # bounded: hostile batches cannot grow it
            _days.clear()
        _days[day] = known
    return known


def _count(value: object, high: int) -> bool:
    return type(value) is int and 0 <= value <= high


def cost_nanos(cost: str | None) -> int | None:
    """A decimal dollar string in nano-dollars, rounded half to even past 9 decimals."""
    if cost is None:
        return None
    whole, dot, frac = cost.partition(".")
    if len(frac) <= 9 and cost.isascii() and whole.isdigit() and (frac.isdigit() or not dot):
        return int(whole) * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    return int((Decimal(cost) * NANOS).to_integral_value())


def tags_json(tags: dict[str, str] | None) -> str | None:
    return json.dumps(tags, separators=(",", ":"), ensure_ascii=False, sort_keys=True) if tags else None


def _fast(obj: Any, ws_id: str, machine_id: str, now: float) -> Values | None:
    """The row's tuple if it is plainly valid; None to let parse_row decide."""
    if type(obj) is not dict or obj.get("tags") is not None:
        return None
    get = obj.get
    rid, ts, provider, model, endpoint, price_version = (
        get("id"), get("ts"), get("provider"), get("model"), get("endpoint"), get("price_version"))
    if type(rid) is not str or not _UUID(rid) or type(ts) is not str:
        return None
    matched = _TS(ts)
    if matched is None or not _real_day(matched.group(1)):
        return None
    texts: tuple[Any, ...] = (provider, model, endpoint, price_version)
    for text in texts:
        if type(text) is not str or len(text) > 512:
            return None
    names = tuple(get(n) for n in _NAMES)
    for name in names:
        if name is not None and (type(name) is not str or not 1 <= len(name) <= 200):
            return None
    if _CONTROL("".join(texts) + "".join(n for n in names if n is not None)):  # all str by now
        return None
    status, stream, latency, ttfb, cost = (
        get("status"), get("stream"), get("latency_ms"), get("ttfb_ms"), get("cost_usd"))
    if type(stream) is not bool or type(status) is not int or not 100 <= status <= 599:
        return None
    if not _count(latency, MAX_MS) or (ttfb is not None and not _count(ttfb, MAX_MS)):
        return None
    counts = tuple(get(n) for n in _TOKENS)
    for count in counts:
        if count is not None and not _count(count, MAX_TOKENS):
            return None
    if cost is not None and (type(cost) is not str or not _COST(cost)):
        return None
    return (
        ws_id, rid.lower(), machine_id, ts, ts[:10], provider, model, endpoint, status, stream,
        *counts, cost, cost_nanos(cost), price_version, latency, ttfb, now, *names, None,
    )


def row_values(row: UsageRow, ws_id: str, machine_id: str, now: float) -> Values:
    """A validated row's tuple in ``usage_rows`` column order."""
    return (
        ws_id, row.id, machine_id, row.ts, row.day, row.provider, row.model, row.endpoint,
        row.status, row.stream, row.input_tokens, row.output_tokens, row.cache_read_tokens,
        row.cache_write_tokens, row.reasoning_tokens, row.cost_usd, cost_nanos(row.cost_usd),
        row.price_version, row.latency_ms, row.ttfb_ms, now, row.project, row.repo, row.branch,
        row.program, row.os_user, tags_json(row.tags),
    )


def batch_values(rows: Sequence[Any], ws_id: str, machine_id: str, now: float) -> list[Values]:
    """Every row of a decoded batch checked (api.md bounds) and as a tuple; raises ApiError."""
    out: list[Values] = []
    for i, obj in enumerate(rows):
        values = _fast(obj, ws_id, machine_id, now)
        if values is None:
            values = row_values(parse_row(obj, f"rows[{i}]"), ws_id, machine_id, now)
        out.append(values)
    return out


# -- the whole body at once (msgspec) ---------------------------------------------

_NO_CONTROL = "^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*\\Z"
_Text = Annotated[str, Meta(max_length=512, pattern=_NO_CONTROL)]
_Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=_NO_CONTROL)]
_Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_Ms = Annotated[int, Meta(ge=0, le=MAX_MS)]
_HEX = "[0-9a-fA-F]"
_UUID_PATTERN = f"^{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}\\Z"
# As _TS and _COST, spelled with [0-9]: msgspec's patterns are not ASCII-only, and \d is.
_TS_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?"
    "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\\Z"
)
_COST_PATTERN = "^[0-9]{1,6}(?:\\.[0-9]{1,12})?\\Z"


_Uuid = Annotated[str, Meta(pattern=_UUID_PATTERN)]


def _body_decoder(text: Any, name: Any) -> Any:
    """A msgspec decoder of a whole batch body whose rows' text fields are ``text`` and
    whose attribution names are ``name``; no unknown field anywhere."""
    opt: list[tuple[str, Any, None]] = [(n, _Tokens | None, None) for n in _TOKENS]
    row = msgspec.defstruct("Row", [
        ("id", _Uuid), ("ts", Annotated[str, Meta(pattern=_TS_PATTERN)]), ("provider", text), ("model", text),
        ("endpoint", text), ("status", Annotated[int, Meta(ge=100, le=599)]), ("stream", bool), *opt,
        ("cost_usd", Annotated[str, Meta(pattern=_COST_PATTERN)] | None, None), ("price_version", text),
        ("latency_ms", _Ms), ("ttfb_ms", _Ms | None, None), *((n, name | None, None) for n in _NAMES),
        ("tags", dict[str, str] | None, None),
    ], kw_only=True, forbid_unknown_fields=True)
    assert row.__struct_fields__ == tuple(UsageRow.__dataclass_fields__), "UsageRow changed: update _body_decoder"
    rows: Any = list[row]  # type: ignore[valid-type]
    body = msgspec.defstruct("Body", [("batch_id", _Uuid), ("rows", rows)], forbid_unknown_fields=True)
    return msgspec.json.Decoder(body).decode


# Two decoders: every text field checked for control characters by a pattern, and one
# without those patterns for bodies that cannot hold a control character at all. JSON
# carries U+0000-U+001F only as escapes (a backslash); U+007F-U+009F, U+2028-U+202E and
# U+2066-U+2069 only as escapes or as UTF-8 starting with 0x7F, 0xC2 or 0xE2. A body
# with none of those four bytes (memchr each) decodes every string to its bytes as they
# are, free of _CONTROL's characters.
_decode_strict = _body_decoder(_Text, _Name)
_decode_plain = _body_decoder(Annotated[str, Meta(max_length=512)], Annotated[str, Meta(min_length=1, max_length=200)])


def fast_batch(raw: bytes, ws_id: str, machine_id: str, now: float, max_rows: int) -> list[Values] | None:
    """The body's rows as tuples if the whole body is plainly valid (a JSON object of
    ``batch_id`` and at most ``max_rows`` rows, every row passing the strict test);
    None to let the orjson + :func:`batch_values` path decide and name the error."""
    plain = not (b"\\" in raw or b"\x7f" in raw or b"\xc2" in raw or b"\xe2" in raw)
    try:
        body = (_decode_plain if plain else _decode_strict)(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if len(body.rows) > max_rows:
        return None
    out: list[Values] = []
    append = out.append
    for r in body.rows:
        ts, tags = r.ts, r.tags
        if not _real_day(ts[:10]):
            return None
        if tags:
            if len(tags) > MAX_TAGS or any(tag_problem(k, v) is not None for k, v in tags.items()):
                return None
        cost = r.cost_usd
        append((
            ws_id, r.id.lower(), machine_id, ts, ts[:10], r.provider, r.model, r.endpoint, r.status, r.stream,
            r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.reasoning_tokens,
            cost, cost_nanos(cost), r.price_version, r.latency_ms, r.ttfb_ms, now,
            r.project, r.repo, r.branch, r.program, r.os_user, tags_json(tags),
        ))
    return out


assert COLUMNS == (
    "workspace_id", "id", "machine_id", "ts", "day", "provider", "model", "endpoint", "status",
    "stream", *_TOKENS, "cost_usd", "cost_nanos", "price_version", "latency_ms", "ttfb_ms",
    "received_at", *_NAMES, "tags",
), "usage_rows changed: update row_values and _fast"
