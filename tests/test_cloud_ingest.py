"""Batch ingest and totals, against the SQLite default AND a real PostgreSQL.

Every test here runs twice: once on a server with a temp SQLite file, once on
a server whose ``--db`` is a PostgreSQL started by tests/support/postgres.py.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import zstandard

from tests.support.cloudserver import CloudServer, batch_body, running_cloud, sample_row

PASSWORD = "correct-horse-1"
MAX_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cloud(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloudServer]:
    db_url = None
    if request.param == "postgresql":
        db_url = request.getfixturevalue("postgres").create_database("hm_cloud_ingest")
    with running_cloud(tmp_path_factory.mktemp(f"cloud-{request.param}"), db_url=db_url) as server:
        server.create_user("ingest@example.com", PASSWORD, "ingest")
        yield server


class Device:
    """A freshly paired machine: posts batches and reads totals with its token."""

    def __init__(self, cloud: CloudServer, token: str, machine_id: str) -> None:
        self.http = cloud.client(headers={"Authorization": f"Bearer {token}"})
        self.machine_id = machine_id

    def send(self, rows: list[dict[str, Any]], **kwargs: Any) -> httpx.Response:
        return self.http.post("/v1/requests/batch", json=batch_body(rows), **kwargs)

    def send_raw(self, content: bytes, encoding: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if encoding:
            headers["Content-Encoding"] = encoding
        return self.http.post("/v1/requests/batch", content=content, headers=headers)

    def totals(
        self, from_date: str = "2026-11-01", to_date: str = "2026-11-30"
    ) -> list[dict[str, Any]]:
        answer = self.http.get(
            "/v1/requests/totals", params={"from_date": from_date, "to_date": to_date}
        )
        assert answer.status_code == 200, answer.text
        days: list[dict[str, Any]] = answer.json()["days"]
        return days


@pytest.fixture
def device(cloud: CloudServer) -> Device:
    machine_id = str(uuid.uuid4())
    paired = cloud.pair("ingest@example.com", PASSWORD, "ingest", machine_id=machine_id)
    assert paired["status_code"] == 200
    return Device(cloud, paired["token"], machine_id)


def test_batch_is_idempotent_by_row_id(device: Device) -> None:
    rows = [sample_row() for _ in range(50)]
    first = device.send(rows)
    assert first.status_code == 200 and first.json() == {"accepted": 50, "duplicates": 0}
    replay = device.send(rows)
    assert replay.json() == {"accepted": 0, "duplicates": 50}
    mixed = device.send(rows[:10] + [sample_row() for _ in range(5)])
    assert mixed.json() == {"accepted": 5, "duplicates": 10}
    fresh = sample_row()
    twice_in_one = device.send([fresh, dict(fresh)])
    assert twice_in_one.json() == {"accepted": 1, "duplicates": 1}
    assert device.totals() == [{"date": "2026-11-24", "rows": 56, "cost_usd": "0.084"}]


def test_a_batch_is_stored_whole_or_not_at_all(device: Device) -> None:
    good = [sample_row() for _ in range(5)]
    missing = sample_row()
    del missing["model"]
    answer = device.send([*good[:3], missing, *good[3:]])
    assert answer.status_code == 422
    assert answer.json() == {"error": "missing_field", "detail": "Field required: rows[3].model"}
    wrong_type = device.send([*good, sample_row(input_tokens="12")])
    assert wrong_type.status_code == 400
    assert (
        wrong_type.json()["detail"]
        == "Invalid field: rows[5].input_tokens (expected an integer from 0 to 1000000000000 or null)"
    )
    assert device.totals() == []
    assert device.send(good).json() == {"accepted": 5, "duplicates": 0}


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_bodies(device: Device, encoding: str) -> None:
    raw = json.dumps(batch_body([sample_row() for _ in range(20)])).encode()
    packed = gzip.compress(raw) if encoding == "gzip" else zstandard.ZstdCompressor().compress(raw)
    answer = device.send_raw(packed, encoding)
    assert answer.status_code == 200 and answer.json() == {"accepted": 20, "duplicates": 0}
    assert device.send_raw(packed, encoding).json() == {"accepted": 0, "duplicates": 20}


def test_size_limits_are_413_with_the_limit(device: Device) -> None:
    too_many = device.send([sample_row() for _ in range(1001)])
    assert too_many.status_code == 413
    assert too_many.json() == {
        "error": "payload_too_large",
        "detail": "Batch has 1001 rows; the limit is 1000 rows per batch: split the batch",
    }
    too_big = device.send_raw(b" " * (MAX_BYTES + 1))
    assert too_big.status_code == 413
    assert "limit of 4194304 bytes (4 MiB)" in too_big.json()["detail"]

    # Decompression bombs: a few KiB that would inflate far past the limit.
    inflated = b"[" + b" " * (8 * MAX_BYTES) + b"]"
    zstd_bomb = zstandard.ZstdCompressor(level=3).compress(inflated)
    gzip_bomb = gzip.compress(inflated, compresslevel=9)
    assert len(zstd_bomb) < 10_000 and len(gzip_bomb) < 100_000
    for bomb, encoding in ((zstd_bomb, "zstd"), (gzip_bomb, "gzip")):
        answer = device.send_raw(bomb, encoding)
        assert answer.status_code == 413, encoding
        assert "4194304 bytes" in answer.json()["detail"]
    assert device.totals() == []


@pytest.mark.parametrize(
    ("content", "encoding", "status", "error"),
    [
        (b"{not json", None, 400, "invalid_request"),
        (b'{"rows": []}', None, 422, "missing_field"),
        (b'{"batch_id": "not-a-uuid", "rows": []}', None, 400, "invalid_request"),
        (
            b'{"batch_id": "6f1c2a4e-1111-4222-8333-444455556666", "rows": {}}',
            None,
            400,
            "invalid_request",
        ),
        (b"definitely not gzip", "gzip", 400, "invalid_request"),
        (b"definitely not zstd", "zstd", 400, "invalid_request"),
        (b"{}", "br", 415, "unsupported_media_type"),
    ],
)
def test_bad_batches(
    device: Device, content: bytes, encoding: str | None, status: int, error: str
) -> None:
    answer = device.send_raw(content, encoding)
    assert answer.status_code == status
    assert answer.json()["error"] == error
    assert set(answer.json()) == {"error", "detail"}


def test_totals_by_day_for_this_machine(cloud: CloudServer, device: Device) -> None:
    rows = [
        sample_row(ts="2026-11-23T23:59:59.999Z", cost_usd="0.10"),
        sample_row(ts="2026-11-24T00:00:00Z", cost_usd="1.005"),
        sample_row(ts="2026-11-24T12:00:00Z", cost_usd="2.23"),
        sample_row(ts="2026-11-24T13:00:00Z", cost_usd=None, model="mystery-1"),
        sample_row(ts="2026-12-01T00:00:00Z", cost_usd="9"),
    ]
    assert device.send(rows).json() == {"accepted": 5, "duplicates": 0}
    assert device.totals() == [
        {"date": "2026-11-23", "rows": 1, "cost_usd": "0.1"},
        {"date": "2026-11-24", "rows": 3, "cost_usd": "3.235"},
    ]
    assert device.totals("2026-11-24", "2026-11-24") == [
        {"date": "2026-11-24", "rows": 3, "cost_usd": "3.235"}
    ]
    assert device.totals("2026-12-01", "2026-12-31") == [
        {"date": "2026-12-01", "rows": 1, "cost_usd": "9"}
    ]

    # Another machine of the same workspace is not in this machine's totals.
    other = cloud.pair("ingest@example.com", PASSWORD, "ingest")
    other_device = Device(cloud, other["token"], other["machine_id"])
    assert other_device.totals() == []


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"from": "2026-11-01", "to": "2026-11-24"}, 422, "Field required: from_date"),
        ({"from_date": "2026-11-01"}, 422, "Field required: to_date"),
        (
            {"from_date": "2026-11-01", "to_date": "24/11/2026"},
            400,
            "Invalid field: to_date (expected YYYY-MM-DD)",
        ),
        (
            {"from_date": "2026-11-24", "to_date": "2026-11-01"},
            400,
            "Invalid range: from_date is after to_date",
        ),
    ],
)
def test_totals_parameters(
    device: Device, params: dict[str, str], status: int, detail: str
) -> None:
    answer = device.http.get("/v1/requests/totals", params=params)
    assert answer.status_code == status
    assert answer.json()["detail"] == detail
    if status == 422:
        assert answer.json()["error"] == "missing_field"


def test_dashboard_and_devices_pages_read_the_rows(cloud: CloudServer) -> None:
    machine_id = str(uuid.uuid4())
    paired = cloud.pair(
        "ingest@example.com", PASSWORD, "ingest", machine_id=machine_id, hostname="pages-box"
    )
    device = Device(cloud, paired["token"], machine_id)
    rows = [
        sample_row(ts="2026-10-05T08:00:00Z", cost_usd="2.50", model="dash-model-a"),
        sample_row(ts="2026-10-06T08:00:00Z", cost_usd=None, model="dash-model-b"),
    ]
    assert device.send(rows).json() == {"accepted": 2, "duplicates": 0}
    session = cloud.login_session("ingest@example.com", PASSWORD)
    page = session.get("/ingest/", params={"from_date": "2026-10-01", "to_date": "2026-10-31"})
    assert page.status_code == 200
    models = page.text.split('id="models-h"', 1)[1].split("</section>", 1)[0]
    assert "dash-model-a" in models and "$2.50" in models
    assert "dash-model-b" in models and "unknown price" in models
    # The chart is drawn twice (phone and desktop widths: chart_narrow, chart_wide).
    assert page.text.count('<g class="bar">') == 2 * 31  # one bar per day of October
    assert page.text.count("<rect ") == 2 * 1  # one day with a known cost
    devices = session.get("/ingest/settings/devices").text
    assert "pages-box" in devices and machine_id in devices


def test_concurrent_replays_store_each_row_once(device: Device) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rows = [sample_row(ts="2026-11-20T10:00:00Z") for _ in range(300)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: device.send(rows).json(), range(4)))
    assert sum(a["accepted"] for a in answers) == 300
    assert sum(a["duplicates"] for a in answers) == 900
    assert device.totals("2026-11-20", "2026-11-20")[0]["rows"] == 300


# -- bounds (issue 10, items 1, 2, 8, 9) -------------------------------------------

_GOOD_ID = "6f1c2a4e-1111-4222-8333-444455556666"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cost_usd", "9000000000"),  # the total-breaking cost of the adversarial test
        ("cost_usd", "1000000.000000000001"),
        ("cost_usd", "-1000000"),  # a negative cost hides the workspace's spend
        ("cost_usd", "0.1234567890123"),  # 13 decimals
        ("cost_usd", "1e3"),
        ("cost_usd", "0.5\n"),
        ("output_tokens", 2**62),  # the SUM-overflow of the adversarial test
        ("output_tokens", 2**63),  # "Python int too large to convert to SQLite INTEGER"
        ("input_tokens", 2**64 - 1),
        ("input_tokens", 10**12 + 1),
        ("cache_read_tokens", -1),
        ("reasoning_tokens", 1.5),
        ("latency_ms", 86_400_001),
        ("latency_ms", 2**63),
        ("ttfb_ms", -5),
        ("status", 99),
        ("status", 600),
        ("status", 2**63),
        ("stream", 1),
        ("id", _GOOD_ID + "\n"),  # "$" accepted this: the row was counted twice
        ("ts", "9999-99-99T99:99:99Z"),
        ("ts", "2026-02-30T10:00:00Z"),
        ("ts", "2026-11-24T24:00:00Z"),
        ("ts", "2026-11-24T10:00:00Z\n"),
        ("ts", "2026-11-24T10:00:00+25:00"),
        ("model", "gpt\x00-4o"),  # PostgreSQL refuses NUL in text: never a 500
        ("provider", "openai\x1b[2J"),
        ("endpoint", "x" * 513),
    ],
)
def test_out_of_bounds_rows_are_refused_naming_row_and_field(
    device: Device, field: str, value: object
) -> None:
    rows = [sample_row(ts="2026-11-11T10:00:00Z") for _ in range(3)]
    rows[2][field] = value
    answer = device.send(rows)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert answer.json()["detail"].startswith(f"Invalid field: rows[2].{field} (")
    assert device.totals("2026-11-11", "2026-11-11") == []  # nothing of the batch was stored


def test_the_largest_legal_values_are_accepted_and_stored_exactly(device: Device) -> None:
    row = sample_row(
        ts="2026-11-12T23:59:59.123456789+00:00",
        cost_usd="1000000.000000000000",
        input_tokens=10**12,
        output_tokens=10**12,
        cache_read_tokens=0,
        status=599,
        latency_ms=86_400_000,
        ttfb_ms=0,
    )
    low = sample_row(ts="2026-11-12T00:00:00Z", cost_usd="0.000000000001", status=100)
    assert device.send([row, low]).json() == {"accepted": 2, "duplicates": 0}
    # A trailing-newline id was never stored: the same id again is a duplicate.
    assert device.send([dict(row)]).json() == {"accepted": 0, "duplicates": 1}
    assert device.totals("2026-11-12", "2026-11-12") == [
        {"date": "2026-11-12", "rows": 2, "cost_usd": "1000000"}
    ]


@pytest.mark.slow
def test_totals_and_dashboard_never_overflow_on_legal_data(cloud: CloudServer) -> None:
    """10,000 rows at the per-row maxima in one day: every sum is past 2**63."""
    paired = cloud.pair("ingest@example.com", PASSWORD, "ingest", hostname="max-box")
    device = Device(cloud, paired["token"], paired["machine_id"])
    for _ in range(10):
        rows = [
            sample_row(
                ts="2026-09-09T09:09:09Z",
                cost_usd="1000000",
                input_tokens=10**12,
                output_tokens=10**12,
            )
            for _ in range(1000)
        ]
        assert device.send(rows).json() == {"accepted": 1000, "duplicates": 0}
    assert 10_000 * 10**15 > 2**63  # the nano-dollar sum alone overflows int64
    assert device.totals("2026-09-01", "2026-09-30") == [
        {"date": "2026-09-09", "rows": 10_000, "cost_usd": "10000000000"}
    ]
    by_model = device.http.get(
        "/v1/requests/totals",
        params={"from_date": "2026-09-01", "to_date": "2026-09-30", "group_by": "model"},
    )
    assert by_model.status_code == 200, by_model.text
    assert by_model.json()["groups"] == [
        {"key": "gpt-4o-mini", "rows": 10_000, "cost_usd": "10000000000"}
    ]
    session = cloud.login_session("ingest@example.com", PASSWORD)
    page = session.get("/ingest/", params={"from_date": "2026-09-01", "to_date": "2026-09-30"})
    assert page.status_code == 200
    assert "$10,000,000,000" in page.text
