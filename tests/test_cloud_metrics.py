"""The backend's /metrics: behind a key or an allowlist, parsed with prometheus_client's parser."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cloudserver import batch_body, running_cloud, sample_row

pytestmark = pytest.mark.slow
PASSWORD = "correct-horse-1"


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_count_ingest_and_pairings_behind_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALTON_METER_CLOUD_METRICS_KEY", "s3cret-scrape-key")
    with running_cloud(tmp_path) as cloud:
        cloud.create_user("m@example.com", PASSWORD, "acme")
        paired = cloud.pair("m@example.com", PASSWORD, "acme", machine_id=str(uuid.uuid4()))
        device = cloud.client(headers={"Authorization": f"Bearer {paired['token']}"})
        rows = [sample_row() for _ in range(3)]
        assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
        assert device.post("/v1/requests/batch", json=batch_body([*rows[:1], sample_row()])).status_code == 200
        assert device.post("/v1/requests/batch", json={"batch_id": "nope", "rows": []}).status_code == 400

        anonymous = cloud.client()
        assert anonymous.get("/metrics").status_code == 403
        assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
        answer = anonymous.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-key"})
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        got = values(answer.text)

    assert got[("halton_meter_cloud_ingested_rows_total", ())] == 4
    assert got[("halton_meter_cloud_duplicate_rows_total", ())] == 1
    assert got[("halton_meter_cloud_batches_total", (("outcome", "accepted"),))] == 2
    assert got[("halton_meter_cloud_batches_total", (("outcome", "rejected"),))] == 1
    assert got[("halton_meter_cloud_batch_duration_seconds_count", ())] == 3
    assert got[("halton_meter_cloud_pairings_total", (("event", "started"),))] == 1
    assert got[("halton_meter_cloud_pairings_total", (("event", "approved"),))] == 1
    assert got[("halton_meter_cloud_devices", (("state", "active"),))] == 1


@pytest.mark.parametrize(("allow", "status"), [("127.0.0.1/32", 200), ("10.0.0.0/8, ::1/128", 403), ("", 404)])
def test_metrics_allowlist_and_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow: str,
                                              status: int) -> None:
    monkeypatch.delenv("HALTON_METER_CLOUD_METRICS_KEY", raising=False)
    monkeypatch.setenv("HALTON_METER_CLOUD_METRICS_ALLOW", allow)
    with running_cloud(tmp_path) as cloud:
        assert cloud.client().get("/metrics").status_code == status
