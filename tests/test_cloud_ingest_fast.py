"""The backend's one-pass batch check (hm_cloud.ingest) is exactly parse_row.

Every row, valid or hostile, gives the same tuple or the same ApiError
(status, code, detail) as validating it with ``hm_proto.server.parse_row``
and building the tuple from the UsageRow. The whole-body decoder
(``fast_batch``, msgspec) gives the same tuples, or None (the other path decides).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from hm_cloud.ingest import batch_values, cost_nanos, fast_batch, row_values
from hm_proto.server import ApiError, parse_row
from tests.support.cloudserver import sample_row

WS, MACHINE, NOW = "ws-1", "machine-1", 1234.5

GOOD: list[dict[str, Any]] = [
    sample_row(),
    sample_row(id="ABCDEF01-2345-4678-9ABC-DEF012345678"),  # stored lower-case
    sample_row(cost_usd=None, input_tokens=None, output_tokens=None, ttfb_ms=None),
    sample_row(cost_usd="999999.999999999999", status=599, latency_ms=86_400_000),
    sample_row(cost_usd="1000000", input_tokens=10**12),  # 7 integer digits: the slow path
    sample_row(ts="2026-02-28T23:59:59+05:30", stream=True),
    sample_row(ts="2024-02-29T00:00:00.123456789-23:59"),
    sample_row(project="acme", repo="widgets", branch="feature/x", program="curl", os_user="ana"),
    sample_row(tags={"team": "core", "cost.center": "42"}),
    sample_row(tags={}),
    sample_row(model="m" * 512, project="p" * 200),
    sample_row(project="café-ü", os_user="José"),  # UTF-8, none of the bytes that may start a control
    sample_row(project="naïve — “quoted”", model="© ®"),  # 0xE2 and 0xC2 leads: the strict decoder
    sample_row(repo='say "hi" \\ bye'),  # escapes: the strict decoder
]

BAD: list[dict[str, Any]] = [
    {k: v for k, v in sample_row().items() if k != "model"},
    {k: v for k, v in sample_row().items() if k != "latency_ms"},
    sample_row(id="not-a-uuid"),
    sample_row(id=12),
    sample_row(ts="2026-02-30T10:00:00Z"),
    sample_row(ts="2026-11-24T24:00:00Z"),
    sample_row(ts="2026-11-24T10:60:00Z"),
    sample_row(ts="2026-11-24T10:00:00"),
    sample_row(ts="2026-11-24T10:00:00Z\n"),
    sample_row(ts="２０２６-11-24T10:00:00Z"),
    sample_row(ts="2026-11-24T10:00:00+24:00"),
    sample_row(model="m" * 513),
    sample_row(model="gpt\u202e4"),
    sample_row(endpoint="/v1\x00"),
    sample_row(provider=None),
    sample_row(status=True),
    sample_row(status=99),
    sample_row(status=600),
    sample_row(status=200.0),
    sample_row(stream=1),
    sample_row(input_tokens=-1),
    sample_row(output_tokens=10**12 + 1),
    sample_row(reasoning_tokens=False),
    sample_row(latency_ms=86_400_001),
    sample_row(ttfb_ms=-5),
    sample_row(cost_usd="1000000.000000000001"),
    sample_row(cost_usd="1e3"),
    sample_row(cost_usd="0.1234567890123"),
    sample_row(cost_usd=0.5),
    sample_row(cost_usd="-1"),
    sample_row(project=""),
    sample_row(project="p" * 201),
    sample_row(repo="a\nb"),
    sample_row(project="nel\x85"),
    sample_row(project="ls\u2028"),
    sample_row(branch="del\x7f"),
    sample_row(program="rlo\u2067"),
    sample_row(os_user=5),
    sample_row(tags={"bad key": "x"}),
    sample_row(tags=["x"]),
    "a row",
    None,
]


def _via_parse_row(obj: Any, i: int) -> Any:
    try:
        return row_values(parse_row(obj, f"rows[{i}]"), WS, MACHINE, NOW)
    except ApiError as exc:
        return (exc.status, exc.error, exc.detail)


def _via_body(obj: Any, i: int, **body: Any) -> Any:
    """fast_batch on a whole body holding the row at index ``i``: the row's tuple, or
    the other path's answer when fast_batch leaves the body to it (None)."""
    rows = [sample_row() for _ in range(i)] + [obj]
    try:
        raw = orjson.dumps({"batch_id": "6f1c2a4e-1111-4222-8333-444455556666", "rows": rows, **body})
    except TypeError:
        return _via_batch(obj, i)
    out = fast_batch(raw, WS, MACHINE, NOW, 1000)
    return _via_batch(obj, i) if out is None else out[-1]


def _via_batch(obj: Any, i: int) -> Any:
    rows = [sample_row() for _ in range(i)] + [obj]
    try:
        return batch_values(rows, WS, MACHINE, NOW)[-1]
    except ApiError as exc:
        return (exc.status, exc.error, exc.detail)


@pytest.mark.parametrize("row", GOOD + BAD, ids=range(len(GOOD + BAD)))
def test_the_one_pass_check_agrees_with_parse_row(row: Any) -> None:
    assert _via_batch(row, 3) == _via_parse_row(row, 3)
    assert _via_body(row, 3) == _via_parse_row(row, 3)


def test_the_body_decoder_takes_plain_batches_and_leaves_the_rest() -> None:
    plain = [r for r in GOOD if r.get("cost_usd") != "1000000"]  # 7 integer digits: the slow path
    raw = orjson.dumps({"batch_id": "6f1c2a4e-1111-4222-8333-444455556666", "rows": plain})
    assert fast_batch(raw, WS, MACHINE, NOW, 1000) == batch_values(plain, WS, MACHINE, NOW)
    for row in BAD:  # each hostile row leaves its whole body to the exact path
        body = orjson.dumps({"batch_id": "6f1c2a4e-1111-4222-8333-444455556666", "rows": [sample_row(), row]})
        assert fast_batch(body, WS, MACHINE, NOW, 1000) is None, row
    good = {"batch_id": "6f1c2a4e-1111-4222-8333-444455556666", "rows": [sample_row()]}
    for body in (
        {**good, "batch_id": "nope"}, {**good, "extra": 1}, {"rows": good["rows"]},
        {**good, "rows": [{**sample_row(), "unknown": 1}]}, {**good, "rows": [sample_row()] * 3},
    ):
        assert fast_batch(orjson.dumps(body), WS, MACHINE, NOW, 2) is None, body
    for raw in (b'{"batch_id":"6f1c2a4e-1111-4222-8333-444455556666","rows":[],"x":1e999}', b"[]", b"{", b"\xff"):
        assert fast_batch(raw, WS, MACHINE, NOW, 2) is None


@pytest.mark.parametrize("cost", ["0", "0.5", "12.000000001", "999999.999999999", "0.0000000005", "0.0000000015",
                                  "0.1234567894999", "999999.999999999999", "1000000", "007.10"])
def test_cost_nanos_is_the_decimal_rounding(cost: str) -> None:
    from decimal import Decimal

    assert cost_nanos(cost) == int((Decimal(cost) * 10**9).to_integral_value())


def test_good_rows_pass_and_bad_rows_fail() -> None:
    for row in GOOD:
        assert isinstance(_via_batch(row, 0)[0], str)
    for row in BAD:
        assert isinstance(_via_batch(row, 0)[0], int), row


def test_random_mutations_agree_with_parse_row() -> None:
    rng = random.Random(18)
    values: list[Any] = [None, True, 0, -1, 1.5, "", "x", "\x07", "2026-11-24", 10**13, [], {}, "0.5",
                         "ab" * 300, "ＡＢ", "00000000-0000-0000-0000-00000000000g"]
    for n in range(3000):
        row = sample_row()
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(list(row))
            if rng.random() < 0.1:
                del row[key]
            else:
                row[key] = rng.choice(values)
        assert _via_batch(row, n % 5) == _via_parse_row(row, n % 5), row
        assert _via_body(row, n % 5) == _via_parse_row(row, n % 5), row
