"""Small pieces of hm_cloud: bounded decompression, the guess limits, formatting."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import zstandard
from sqlalchemy import text

from hm_cloud.bodies import decode_body
from hm_cloud.db import init_schema, make_engine
from hm_cloud.limits import Limit, Refusal, Reservation, release, reserve
from hm_cloud.security import SessionCodec, csrf_ok, hash_password, verify_password
from hm_cloud.store import format_nanos
from hm_cloud.views import cost_cell, cost_chart, money, relative_time
from hm_proto.server import ApiError

LIMIT = 1024


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_decompression_stops_at_the_limit(encoding: str) -> None:
    def pack(data: bytes) -> bytes:
        return (
            gzip.compress(data) if encoding == "gzip" else zstandard.ZstdCompressor().compress(data)
        )

    assert decode_body(pack(b"x" * LIMIT), encoding, LIMIT) == b"x" * LIMIT
    with pytest.raises(ApiError) as too_big:
        decode_body(pack(b"x" * (LIMIT + 1)), encoding, LIMIT)
    assert too_big.value.status == 413 and "1024 bytes" in too_big.value.detail
    # A 128 MiB bomb is refused after producing at most LIMIT + 1 bytes.
    bomb = pack(b"\0" * (128 << 20)) if encoding == "zstd" else None
    if bomb is not None:
        with pytest.raises(ApiError):
            decode_body(bomb, encoding, LIMIT)


def test_truncated_and_unknown_encodings() -> None:
    with pytest.raises(ApiError) as truncated:
        decode_body(gzip.compress(b"x" * 100)[:-10], "gzip", LIMIT)
    assert truncated.value.status == 400
    with pytest.raises(ApiError) as unknown:
        decode_body(b"", "br", LIMIT)
    assert unknown.value.status == 415
    assert decode_body(b"plain", None) == b"plain"


def test_limits_count_in_the_database_with_a_sliding_window(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'limits.sqlite'}")
    init_schema(engine)
    per_user, per_addr = Limit("u", 3, 600.0), Limit("a", 5, 600.0)
    attempts = [(per_user, "1"), (per_addr, "127.0.0.1")]
    held = [reserve(engine, attempts, now=t) for t in (0, 1, 2)]
    assert all(isinstance(r, Reservation) for r in held)
    refused = reserve(engine, attempts, now=3)
    assert refused == Refusal(per_user, 597)  # the slot of t=0 frees at t=600
    assert isinstance(reserve(engine, [(per_user, "2")], now=3), Reservation)
    release(engine, held[0])  # e.g. the right password: it does not count
    assert isinstance(reserve(engine, attempts, now=4), Reservation)
    assert isinstance(reserve(engine, attempts, now=5), Refusal)
    # A refused attempt counts against none of its limits: the address still has 2 of 5 free.
    for expected in (Reservation, Reservation, Refusal):
        assert isinstance(reserve(engine, [(per_addr, "127.0.0.1")], now=5), expected)
    assert isinstance(reserve(engine, attempts, now=601.5), Reservation)  # t=1 aged out
    with engine.connect() as conn:  # keys are hashes: no email or address is stored
        keys = conn.execute(text("SELECT key FROM limiter_slots")).scalars().all()
    assert keys and not any("127.0.0.1" in k for k in keys)
    engine.dispose()


def test_sessions_and_passwords() -> None:
    codec = SessionCodec("secret")
    fresh = codec.load(None)
    assert fresh.fresh and fresh.user_id is None
    fresh.user_id = 7
    back = codec.load(codec.dump(fresh))
    assert back.user_id == 7 and csrf_ok(back, fresh.csrf) and not csrf_ok(back, "nope")
    assert SessionCodec("other").load(codec.dump(fresh)).user_id is None  # forged signature
    stored = hash_password("hunter2hunter2")
    assert stored.startswith("$argon2")
    assert verify_password(stored, "hunter2hunter2") and not verify_password(stored, "wrong")
    assert not verify_password(None, "anything")


def test_money_and_unknown_prices() -> None:
    assert format_nanos(3_235_000_000) == "3.235"
    assert format_nanos(None) == "0" and format_nanos(9_000_000_000) == "9"
    assert money(1_520_000_000) == "$1.52" and money(1_500_000) == "$0.0015" and money(0) == "$0.00"
    assert money(20_000) == "<$0.0001"
    assert cost_cell({"rows": 2, "unknown": 2, "nanos": 0}) == "unknown price"
    assert (
        cost_cell({"rows": 3, "unknown": 1, "nanos": 1_100_000_000}) == "$1.10 + 1 at unknown price"
    )
    assert relative_time(None, 10) == "never" and relative_time(7, 10) == "3s ago"
    assert relative_time(0, 7200) == "2 h ago" and relative_time(0, 86400 * 3) == "3 days ago"


def test_chart_has_a_bar_per_day() -> None:
    chart = cost_chart({"gpt-4o": {"2026-11-02": 5_000_000}}, "2026-11-01", "2026-11-03", "model")
    assert chart.count('<g class="bar">') == 3
    assert "<title>2026-11-02 · gpt-4o: $0.0050</title>" in chart
    assert "<title>2026-11-01: $0</title>" in chart


def test_cost_cell_says_apart_what_has_no_price() -> None:
    group = {"rows": 6, "nanos": 1_100_000_000, "unknown": 1, "no_usage": 2, "errors": 1}
    assert cost_cell(group) == "$1.10 + 1 at unknown price + 2 without usage"


@pytest.mark.anyio
async def test_a_server_fault_is_a_json_500(tmp_path: Path) -> None:
    import httpx
    from sqlalchemy import text

    from hm_cloud.app import create_app
    from hm_cloud.db import init_schema, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    init_schema(engine)
    app = create_app(engine, "http://cloud.test")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE pairings"))  # the database breaks under the server
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as client:
        answer = await client.post(
            "/v1/pairing/start",
            json={
                "machine_id": "6f1c2a4e-1111-4222-8333-444455556666",
                "hostname": "h",
                "os": "linux",
                "agent_version": "0.2.1",
            },
        )
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "internal_error",
        "detail": "The server failed on this request: try again later",
    }
    engine.dispose()
