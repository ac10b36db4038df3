"""The backend's Prometheus ``GET /metrics``: ingest, batch latency, pairings.

Off unless ``HALTON_METER_CLOUD_METRICS_KEY`` (scrapers send
``Authorization: Bearer KEY``) or ``HALTON_METER_CLOUD_METRICS_ALLOW`` (a
comma-separated list of client networks, e.g. ``127.0.0.1/32,10.0.0.0/8``)
is set; with both, either lets a scraper in. Otherwise the path answers 404
like any unknown one. Counters are per server process (each worker of a
multi-process deployment is its own target); gauges of devices are read from
the database at scrape time.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .db import devices
from .state import client_address, cloud

log = logging.getLogger("hm_cloud.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
INGESTED_ROWS = Counter("halton_meter_cloud_ingested_rows", "Usage rows stored (duplicates not counted).",
                        registry=REGISTRY)
DUPLICATE_ROWS = Counter("halton_meter_cloud_duplicate_rows", "Usage rows received again (already stored).",
                         registry=REGISTRY)
BATCHES = Counter("halton_meter_cloud_batches", "Batches received, by outcome.", ["outcome"], registry=REGISTRY)
BATCH_SECONDS = Histogram("halton_meter_cloud_batch_duration_seconds",
                          "Time to read, check and store one batch (accepted or not).", registry=REGISTRY,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
PAIRINGS = Counter("halton_meter_cloud_pairings", "Pairing events: started, approved, denied.", ["event"],
                   registry=REGISTRY)


class _Devices:
    """Paired devices now, active and revoked (from the database at scrape time)."""

    engine: Engine | None = None

    def collect(self) -> Iterator[Any]:
        if self.engine is None:
            return
        family = GaugeMetricFamily("halton_meter_cloud_devices", "Paired devices.", labels=["state"])
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(devices.c.revoked_at.is_(None), func.count())
                                    .group_by(devices.c.revoked_at.is_(None))).all()
        except Exception:
            log.exception("cannot count devices for /metrics")
            return
        counts = {bool(active): int(n) for active, n in rows}
        family.add_metric(["active"], counts.get(True, 0))
        family.add_metric(["revoked"], counts.get(False, 0))
        yield family

    def describe(self) -> list[Any]:
        return []


_DEVICES = _Devices()
REGISTRY.register(_DEVICES)


def batch_done(started: float, outcome: str, accepted: int = 0, duplicates: int = 0) -> None:
    BATCH_SECONDS.observe(time.perf_counter() - started)
    BATCHES.labels(outcome).inc()
    if accepted:
        INGESTED_ROWS.inc(accepted)
    if duplicates:
        DUPLICATE_ROWS.inc(duplicates)


def _key_matches(request: Request) -> bool:
    key = os.environ.get("HALTON_METER_CLOUD_METRICS_KEY", "")
    given = request.headers.get("authorization", "")
    return bool(key) and hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {key}".encode())


def _network_allowed(request: Request) -> bool:
    allow = os.environ.get("HALTON_METER_CLOUD_METRICS_ALLOW", "")
    if allow:
        try:
            address = ipaddress.ip_address(client_address(request))
        except ValueError:
            return False
        for net in allow.split(","):
            try:
                if address in ipaddress.ip_network(net.strip(), strict=False):
                    return True
            except ValueError:
                continue
    return False


async def metrics(request: Request) -> Response:
    if not (os.environ.get("HALTON_METER_CLOUD_METRICS_KEY") or os.environ.get("HALTON_METER_CLOUD_METRICS_ALLOW")):
        return Response('{"error":"not_found","detail":"No such endpoint: see docs/api.md"}', 404,
                        media_type="application/json")
    if not _network_allowed(request):
        # The key is the operator's choice (maybe a word): a wrong one is a guess, counted first.
        from .limits import METRICS_KEY_GUESSES_PER_ADDRESS, Refusal

        counted = await cloud(request).reserve([(METRICS_KEY_GUESSES_PER_ADDRESS, client_address(request))])
        if isinstance(counted, Refusal):
            return Response('{"error":"rate_limited","detail":"Too many wrong /metrics keys from this address: '
                            f'wait {counted.retry_after} seconds"}}', 429, {"Retry-After": str(counted.retry_after)},
                            media_type="application/json")
        if not _key_matches(request):
            return Response('{"error":"forbidden","detail":"Scrape /metrics with Authorization: Bearer '
                            'HALTON_METER_CLOUD_METRICS_KEY, or from an address in HALTON_METER_CLOUD_METRICS_ALLOW"}',
                            403, media_type="application/json")
        await cloud(request).release(counted)
    _DEVICES.engine = cloud(request).engine
    import anyio.to_thread

    body = await anyio.to_thread.run_sync(generate_latest, REGISTRY)
    return Response(body, 200, media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
