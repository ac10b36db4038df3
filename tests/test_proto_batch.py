"""BatchBuilder: body bytes, limits, splitting, encodings, batch ids."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import uuid
from datetime import datetime

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from hm_proto import (
    ENVELOPE_BYTES,
    MAX_BATCH_BYTES,
    MAX_BATCH_ROWS,
    BatchBuilder,
    LocalProtocolError,
    RowTooLarge,
    UsageRow,
    new_batch_id,
)


def seeded(seed: int = 1):  # type: ignore[no-untyped-def]
    return random.Random(seed).randbytes


def usage_row(i: int, model: str = "claude-sonnet-4-5") -> UsageRow:
    return UsageRow(
        id=str(uuid.UUID(int=i + 1, version=4)),
        ts="2026-11-24T10:00:00.123Z",
        provider="anthropic",
        model=model,
        endpoint="/v1/messages",
        status=200,
        stream=True,
        input_tokens=1200,
        output_tokens=300,
        cache_read_tokens=None,
        cache_write_tokens=0,
        reasoning_tokens=None,
        cost_usd="0.012345",
        price_version="0.0.61",
        latency_ms=2100,
        ttfb_ms=340,
    )


def stored(n: int) -> list[tuple[str, bytes]]:
    return [(r.id, r.to_json()) for r in (usage_row(i) for i in range(n))]


def decode(body: bytes, encoding: str | None) -> bytes:
    if encoding is None:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    return zstandard.ZstdDecompressor().decompress(body)


# -- batch ids -----------------------------------------------------------------


def test_batch_id_is_a_version_4_uuid_from_16_entropy_bytes() -> None:
    asked: list[int] = []

    def entropy(n: int) -> bytes:
        asked.append(n)
        return b"\xff" * n

    batch_id = new_batch_id(entropy)
    assert asked == [16]
    parsed = uuid.UUID(batch_id)
    assert str(parsed) == batch_id
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


@given(st.binary(min_size=16, max_size=16))
def test_batch_id_sets_version_and_variant_for_any_bytes(raw: bytes) -> None:
    parsed = uuid.UUID(new_batch_id(lambda n: raw))
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_short_entropy_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        new_batch_id(lambda n: b"\x00" * 8)


# -- bodies --------------------------------------------------------------------


def test_body_is_the_byte_join_of_the_stored_rows() -> None:
    rows = stored(3)
    batch = BatchBuilder(None).build_one(rows, seeded())
    expected = (
        b'{"batch_id":"' + batch.batch_id.encode() + b'","rows":['
        + b",".join(j for _, j in rows)
        + b"]}"
    )  # fmt: skip
    assert batch.body == expected
    assert batch.raw_size == len(expected)
    assert batch.row_ids == tuple(i for i, _ in rows)
    parsed = json.loads(batch.body)
    assert parsed["rows"] == [usage_row(i).to_dict() for i in range(3)]


@pytest.mark.parametrize("encoding", [None, "gzip", "zstd"])
def test_every_encoding_round_trips_and_sets_the_header(encoding: str | None) -> None:
    rows = stored(50)
    batch = BatchBuilder(encoding).build_one(rows, seeded())  # type: ignore[arg-type]
    raw = decode(batch.body, encoding)
    assert len(raw) == batch.raw_size
    assert json.loads(raw)["batch_id"] == batch.batch_id
    request = batch.to_request("hm_sync_abc")
    assert (request.method, request.target) == ("POST", "/v1/requests/batch")
    assert request.header("authorization") == "Bearer hm_sync_abc"
    assert request.header("content-type") == "application/json"
    assert request.header("content-encoding") == encoding
    assert request.body == batch.body
    if encoding is not None:
        assert len(batch.body) < batch.raw_size


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        BatchBuilder("br")  # type: ignore[arg-type]


def test_limits_are_validated() -> None:
    with pytest.raises(LocalProtocolError):
        BatchBuilder(max_rows=MAX_BATCH_ROWS + 1)
    with pytest.raises(LocalProtocolError):
        BatchBuilder(max_bytes=MAX_BATCH_BYTES + 1)
    with pytest.raises(LocalProtocolError):
        BatchBuilder(max_rows=0)


def test_build_one_refuses_what_does_not_fit_and_empty_input() -> None:
    with pytest.raises(LocalProtocolError):
        BatchBuilder(None, max_rows=2).build_one(stored(3), seeded())
    with pytest.raises(LocalProtocolError):
        BatchBuilder(None).build_one([], seeded())


# -- limits and splitting ------------------------------------------------------


def test_2500_rows_split_into_1000_1000_500_in_order() -> None:
    rows = stored(2500)
    batches = BatchBuilder("zstd").build(rows, seeded())
    assert [len(b) for b in batches] == [1000, 1000, 500]
    assert [i for b in batches for i in b.row_ids] == [i for i, _ in rows]
    assert len({b.batch_id for b in batches}) == 3


def test_big_rows_split_by_bytes_under_the_4_mib_limit() -> None:
    big = [(f"row-{i}", b'{"pad":"' + b"x" * 1_500_000 + b'"}') for i in range(7)]
    batches = BatchBuilder(None).build(big, seeded())
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    for b in batches:
        assert b.raw_size <= MAX_BATCH_BYTES
        assert len(b.body) == b.raw_size


def test_a_row_that_fills_the_batch_exactly_fits_and_one_byte_more_does_not() -> None:
    limit = 1000
    exact = limit - ENVELOPE_BYTES
    builder = BatchBuilder(None, max_bytes=limit)
    batch = builder.build_one([("a", b"x" * exact)], seeded())
    assert batch.raw_size == limit
    with pytest.raises(RowTooLarge) as info:
        builder.build([("ok", b"1"), ("huge", b"x" * (exact + 1))], seeded())
    assert info.value.row_id == "huge" and info.value.size == exact + 1
    assert "huge" in str(info.value) and "cannot be uploaded" in str(info.value)


def test_fit_honours_a_lower_row_limit_and_reports_oversized_rows() -> None:
    builder = BatchBuilder(None, max_bytes=200)
    rows = [("a", b"1"), ("b", b"2"), ("c", b"x" * 500), ("d", b"4")]
    assert builder.fit(rows, 0, max_rows=1) == 1
    assert builder.fit(rows, 0) == 2
    with pytest.raises(RowTooLarge):
        builder.fit(rows, 2)
    assert builder.fit(rows, 3) == 4
    assert builder.fit(rows, 4) == 4


row_sizes = st.lists(st.integers(min_value=1, max_value=300), min_size=0, max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    sizes=row_sizes,
    max_rows=st.integers(min_value=1, max_value=10),
    max_bytes=st.integers(min_value=ENVELOPE_BYTES + 1, max_value=1200),
    encoding=st.sampled_from([None, "gzip", "zstd"]),
)
def test_batches_never_exceed_the_limits_and_keep_every_row_in_order(
    sizes: list[int], max_rows: int, max_bytes: int, encoding: str | None
) -> None:
    rows = [(f"r{i}", b"7" * n) for i, n in enumerate(sizes)]  # a JSON number of n bytes
    builder = BatchBuilder(encoding, max_rows=max_rows, max_bytes=max_bytes)  # type: ignore[arg-type]
    fits_alone = [ENVELOPE_BYTES + n <= max_bytes for n in sizes]
    if not all(fits_alone):
        with pytest.raises(RowTooLarge) as info:
            builder.build(rows, seeded())
        assert info.value.row_id == f"r{fits_alone.index(False)}"
        return
    batches = builder.build(rows, seeded())
    assert [i for b in batches for i in b.row_ids] == [i for i, _ in rows]
    for b in batches:
        assert 1 <= len(b) <= max_rows
        raw = decode(b.body, encoding)
        assert len(raw) == b.raw_size <= max_bytes
        assert len(json.loads(raw)["rows"]) == len(b)
    # greedy: no batch could have taken the next row as well
    for b, nxt in zip(batches, batches[1:], strict=False):
        nxt_size = sizes[int(nxt.row_ids[0][1:])]
        assert len(b) == max_rows or b.raw_size + 1 + nxt_size > max_bytes


def test_importing_hm_proto_does_not_import_zstandard() -> None:
    probe = "import sys, hm_proto; print('zstandard' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=40), max_rows=st.integers(1, 12),
       slack=st.integers(0, 700))
def test_build_splits_exactly_where_fit_says(sizes: list[int], max_rows: int, slack: int) -> None:
    """build() checks the joined body's length instead of summing sizes first: same batches as fit()."""
    from hm_proto._batch import ENVELOPE_BYTES

    rows = [(f"r{i}", b'"' + b"x" * (size - 2) + b'"' if size > 1 else b"1") for i, size in enumerate(sizes)]
    builder = BatchBuilder(None, max_rows=max_rows, max_bytes=ENVELOPE_BYTES + max(sizes) + slack)
    expected, start = [], 0
    while start < len(rows):
        end = builder.fit(rows, start)
        expected.append(tuple(r[0] for r in rows[start:end]))
        start = end
    batches = builder.build(rows, seeded())
    assert [b.row_ids for b in batches] == expected
    for batch in batches:
        assert len(batch.body) == batch.raw_size <= builder.max_bytes
        doc = json.loads(batch.body)
        assert doc["batch_id"] == batch.batch_id and len(doc["rows"]) == len(batch)


# -- the backend reads every body back ---------------------------------------------

_TEXT = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                      blacklist_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_COUNT = st.one_of(st.none(), st.integers(0, 10**12))
_NAME = st.one_of(st.none(), st.text(_TEXT, min_size=1, max_size=30))


@st.composite
def api_rows(draw: st.DrawFn) -> UsageRow:
    """Any row inside the api.md bounds, attribution and tags included."""
    when = draw(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)))
    cost = draw(st.one_of(st.none(), st.from_regex(r"[0-9]{1,6}(\.[0-9]{1,12})?", fullmatch=True)))
    tag_key = st.from_regex(r"[A-Za-z0-9_.:/-]{1,64}", fullmatch=True)
    return UsageRow(
        id=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4)),
        ts=when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        provider=draw(st.text(_TEXT, max_size=20)), model=draw(st.text(_TEXT, max_size=40)),
        endpoint=draw(st.text(_TEXT, max_size=40)), status=draw(st.integers(100, 599)),
        stream=draw(st.booleans()), input_tokens=draw(_COUNT), output_tokens=draw(_COUNT),
        cache_read_tokens=draw(_COUNT), cache_write_tokens=draw(_COUNT), reasoning_tokens=draw(_COUNT),
        cost_usd=cost, price_version=draw(st.text(_TEXT, max_size=12)),
        latency_ms=draw(st.integers(0, 86_400_000)), ttfb_ms=draw(st.one_of(st.none(), st.integers(0, 86_400_000))),
        project=draw(_NAME), repo=draw(_NAME), branch=draw(_NAME), program=draw(_NAME), os_user=draw(_NAME),
        tags=draw(st.one_of(st.none(), st.dictionaries(tag_key, st.text(_TEXT, max_size=30), min_size=1, max_size=16))),
    )


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(api_rows(), min_size=1, max_size=25, unique_by=lambda r: r.id),
       max_rows=st.integers(1, 10), encoding=st.sampled_from([None, "gzip", "zstd"]))
def test_the_backend_reads_every_body_back_to_the_same_rows(
    rows: list[UsageRow], max_rows: int, encoding: str | None
) -> None:
    """Builder -> hm_cloud's bounded decoder -> its JSON parser -> its one-pass row check: same rows."""
    import orjson

    from hm_cloud.bodies import decode_body
    from hm_cloud.ingest import batch_values, row_values

    builder = BatchBuilder(encoding, max_rows=max_rows)  # type: ignore[arg-type]
    batches = builder.build([(r.id, r.to_json()) for r in rows], seeded())
    by_id = {r.id: r for r in rows}
    for batch in batches:
        doc = orjson.loads(decode_body(batch.body, batch.content_encoding))
        assert doc["batch_id"] == batch.batch_id
        got = batch_values(doc["rows"], "ws", "machine", 0.0)
        assert got == [row_values(by_id[i], "ws", "machine", 0.0) for i in batch.row_ids]


def test_a_zstd_body_is_one_frame_that_declares_its_size_without_a_checksum() -> None:
    """The backend reads content_size to refuse oversized bodies before inflating them."""
    batch = BatchBuilder("zstd").build_one(stored(200), seeded())
    frame = zstandard.get_frame_parameters(batch.body)
    assert frame.content_size == batch.raw_size
    assert not frame.has_checksum
    assert zstandard.ZstdDecompressor().decompress(batch.body) == b"".join(
        (b'{"batch_id":"', batch.batch_id.encode(), b'","rows":[', b",".join(j for _, j in stored(200)), b"]}"))
