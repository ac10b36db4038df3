"""The row validator's patterns and bounds (the backend runs it on every row)."""

from __future__ import annotations

import pytest

from hm_proto.server import ApiError, check_int, check_text, is_timestamp, is_uuid

UUID = "6f1c2a4e-1111-4222-8333-444455556666"


def test_patterns_are_full_matches() -> None:
    assert is_uuid(UUID) and is_uuid(UUID.upper())
    for bad in (UUID + "\n", "\n" + UUID, UUID + "0", UUID[:-1], None, 5):
        assert not is_uuid(bad)
    assert is_timestamp("2026-11-24T10:00:00Z")
    assert not is_timestamp("2026-11-24T10:00:00Z\n")


@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        ("2024-02-29T23:59:59.999999999Z", True),
        ("2026-11-24T10:00:00-05:30", True),
        ("9999-99-99T99:99:99Z", False),
        ("2023-02-29T10:00:00Z", False),
        ("2026-13-01T10:00:00Z", False),
        ("2026-11-24T23:60:00Z", False),
        ("2026-11-24T23:00:60Z", False),
        ("2026-11-24T10:00:00+24:00", False),
        ("2026-11-24 10:00:00Z", False),
        ("０２０２6-11-24T10:00:00Z", False),  # non-ASCII digits
    ],
)
def test_timestamps_must_be_real(ts: str, ok: bool) -> None:
    assert is_timestamp(ts) is ok


def test_int_and_text_checks_name_the_field() -> None:
    assert check_int(0, "f", 0, 5) == 0
    for bad in (True, 6, -1, 1.0, "1", None):
        with pytest.raises(ApiError) as err:
            check_int(bad, "rows[1].f", 0, 5)
        assert err.value.status == 400 and "rows[1].f" in err.value.detail
    assert check_text("é ok", "f") == "é ok"
    for bad in ("a\x00", "a\n", "\x9b", "x" * 513, 5):
        with pytest.raises(ApiError):
            check_text(bad, "f")
