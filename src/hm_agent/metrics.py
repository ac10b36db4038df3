"""Prometheus ``GET /metrics`` on loopback (``[metrics] listen``, off by default).

The ``metrics`` supervisor component serves prometheus_client's exposition
on its own thread. Counters are kept by a RowFeed listener (the writer
thread adds each written row once); gauges are read at scrape time. Names
follow Prometheus' rules: base units (seconds, dollars), ``_total`` on
counters, and labels only for provider, model, status class and token type
— never a user, an e-mail or a key. Counters count rows written since the
daemon started (Prometheus' ``rate()``/``increase()`` handle restarts),
whether or not /metrics is being served (``Outputs`` always counts: a few
dict updates per row on the writer thread).

A hostile upstream could invent a new model name per call: past
``MAX_SERIES`` label sets, new ones are counted under ``model="other"``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from hm_proto import SyncState

log = logging.getLogger("hm_agent.metrics")

TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# SyncState's spellings (defined once, in hm_proto) plus the daemon's two of its own.
SYNC_STATES = (SyncState.NOT_CONFIGURED.value, "STARTING", SyncState.ACTIVE.value,
               SyncState.DEGRADED.value, SyncState.PAUSED.value, "UNAVAILABLE")
MAX_SERIES = 2000
MAX_LABEL = 200


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


def unknown_price(row: dict[str, Any]) -> bool:
    """As ``report`` counts ``unknown_price_calls``: an unpriced call that is neither an error
    (no usage, not spend) nor a call without token counts (``usage_missing``)."""
    status = int(row["status"])
    return (row["cost_usd"] is None and 0 < status < 400
            and "usage_missing" not in str(row.get("flags") or "").split())


class _Histogram:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def samples(self) -> list[tuple[str, float]]:
        out = [(str(bound), float(n)) for bound, n in zip(DURATION_BUCKETS, self.buckets, strict=True)]
        return [*out, ("+Inf", float(self.count))]


class MetricsListener:
    """Counts written rows (a RowFeed listener: runs on the writer thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.tokens: dict[tuple[str, str, str], int] = {}
        self.cost: dict[tuple[str, str], Decimal] = {}
        self.unpriced: dict[tuple[str, str], int] = {}
        self.duration: dict[str, _Histogram] = {}
        self._models: set[tuple[str, str]] = set()

    def _labels(self, row: dict[str, Any]) -> tuple[str, str]:
        key = (str(row["provider"])[:MAX_LABEL], str(row["model"])[:MAX_LABEL])
        if key in self._models:
            return key
        if len(self._models) >= MAX_SERIES:
            return key[0], "other"
        self._models.add(key)
        return key

    def on_rows(self, store: Any, rows: list[dict[str, Any]], watermark: int) -> None:
        if not rows:
            return
        with self._lock:
            for row in rows:
                provider, model = self._labels(row)
                key3 = (provider, model, status_class(int(row["status"])))
                self.requests[key3] = self.requests.get(key3, 0) + 1
                for kind in TOKEN_TYPES:
                    value = row.get(f"{kind}_tokens")
                    if value:
                        tkey = (provider, model, kind)
                        self.tokens[tkey] = self.tokens.get(tkey, 0) + int(value)
                pair = (provider, model)
                if row["cost_usd"] is None:
                    if unknown_price(row):
                        self.unpriced[pair] = self.unpriced.get(pair, 0) + 1
                else:
                    self.cost[pair] = self.cost.get(pair, Decimal(0)) + Decimal(row["cost_usd"])
                hist = self.duration.get(provider)
                if hist is None:
                    hist = self.duration[provider] = _Histogram()
                hist.observe(max(0, int(row["latency_ms"])) / 1000.0)


class DaemonCollector:
    """What ``/metrics`` shows: the listener's counters plus gauges read from the daemon now."""

    def __init__(self, listener: MetricsListener, ctx: Any) -> None:
        self.listener = listener
        self.ctx = ctx

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        m = self.listener
        with m._lock:
            requests = dict(m.requests)
            tokens = dict(m.tokens)
            cost = dict(m.cost)
            unpriced = dict(m.unpriced)
            duration = {p: (h.samples(), h.total) for p, h in m.duration.items()}
        fam = CounterMetricFamily("halton_meter_requests", "Metered LLM calls (one per upstream response).",
                                  labels=["provider", "model", "status_class"])
        for labels, n in sorted(requests.items()):
            fam.add_metric(list(labels), n)
        yield fam
        fam = CounterMetricFamily("halton_meter_tokens", "Tokens of metered calls, by type.",
                                  labels=["provider", "model", "type"])
        for labels, n in sorted(tokens.items()):
            fam.add_metric(list(labels), n)
        yield fam
        fam = CounterMetricFamily("halton_meter_cost_usd", "Known cost of metered calls in US dollars.",
                                  labels=["provider", "model"])
        for pair, amount in sorted(cost.items()):
            fam.add_metric(list(pair), float(amount))
        yield fam
        fam = CounterMetricFamily("halton_meter_unpriced_requests",
                                  "Metered calls whose price is unknown (not counted as $0 in the cost).",
                                  labels=["provider", "model"])
        for pair, n in sorted(unpriced.items()):
            fam.add_metric(list(pair), n)
        yield fam
        hist = HistogramMetricFamily("halton_meter_request_duration_seconds",
                                     "Duration of metered LLM calls through the proxy, request to last byte.",
                                     labels=["provider"])
        for provider, (buckets, total) in sorted(duration.items()):
            hist.add_metric([provider], buckets, total)
        yield hist
        yield from self._gauges()

    def _gauges(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            StateSetMetricFamily,
        )

        ctx = self.ctx
        try:
            unsynced = float(ctx.store.count_unsynced())
        except Exception:
            unsynced = float("nan")
        yield GaugeMetricFamily("halton_meter_rows_unsynced", "Rows waiting for upload to the cloud.",
                                value=unsynced)
        try:
            from .daemon import cloud_status

            state = str(cloud_status(ctx.config, ctx.supervisor.health() if ctx.supervisor else {})["state"])
        except Exception:
            state = "UNAVAILABLE"
        states = dict.fromkeys(SYNC_STATES, False)
        states[state if state in states else "UNAVAILABLE"] = True
        yield StateSetMetricFamily("halton_meter_sync_state", "Cloud sync state (one of them is 1).", value=states)
        outputs = getattr(ctx, "outputs", None)
        if outputs is None:
            return
        spend = GaugeMetricFamily("halton_meter_budget_spend_usd", "Spend of a budget in its current period.",
                                  labels=["budget", "period"])
        limit = GaugeMetricFamily("halton_meter_budget_limit_usd", "A budget's limit.", labels=["budget", "period"])
        for view in outputs.budgets():
            spend.add_metric([view["name"], view["period"]], float(Decimal(view["spend_usd"])))
            limit.add_metric([view["name"], view["period"]], float(Decimal(view["limit_usd"])))
        yield spend
        yield limit
        yield CounterMetricFamily("halton_meter_blocked_requests", "Calls refused by a block budget.",
                                  value=outputs.tracker.blocked_calls)


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsComponent:
    """Serves /metrics while ``[metrics] listen`` is set."""

    name = "metrics"

    def __init__(self) -> None:
        self.address: str | None = None
        self.scrapes_error: str | None = None

    def should_run(self, config: Any, home: Any) -> bool:
        return bool(getattr(config, "metrics_listen", None))

    async def run(self, ctx: Any) -> None:
        import anyio
        from prometheus_client import CollectorRegistry, start_http_server

        host, port = parse_listen(ctx.config.metrics_listen)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DaemonCollector(ctx.outputs.metrics, ctx))
        try:
            server, _ = await anyio.to_thread.run_sync(lambda: start_http_server(port, host, registry))
        except OSError as exc:
            raise RuntimeError(f"cannot serve metrics on {ctx.config.metrics_listen}: {exc.strerror or exc}; "
                               f"change [metrics] listen in config.toml") from None
        self.address = f"http://{ctx.config.metrics_listen}/metrics"
        log.info("metrics on %s", self.address)
        try:
            await anyio.sleep_forever()
        finally:
            self.address = None
            server.shutdown()
            server.server_close()

    def health(self) -> dict[str, Any]:
        return {"url": self.address}


def make_component() -> MetricsComponent:
    return MetricsComponent()
