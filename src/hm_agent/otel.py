"""OpenTelemetry GenAI metrics over OTLP/HTTP (the optional ``otel`` extra).

With ``[otel] endpoint = "http://127.0.0.1:4318/v1/metrics"`` the ``otel``
supervisor component exports, for every metered call:

- ``gen_ai.client.token.usage`` (histogram, ``{token}``, ``gen_ai.token.type``
  = ``input`` | ``output``);
- ``gen_ai.client.operation.duration`` (histogram, ``s``);
- ``gen_ai.usage.cost`` (counter, ``USD``): not part of the semantic
  conventions (an informal name several tools use).

Attributes: ``gen_ai.provider.name``, ``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``server.address``
(+ ``server.port`` when not 443) and ``error.type`` for failed calls.

Off the proxy's path: a RowFeed listener (writer thread) only appends rows
to a bounded queue (``QUEUE_MAX``; beyond it rows are counted as dropped,
never block); the component's thread records them, and the SDK's periodic
reader exports. Nothing here is imported unless ``[otel]`` is configured.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from typing import Any

log = logging.getLogger("hm_agent.otel")

QUEUE_MAX = 10_000
DEFAULT_INTERVAL_S = 60
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# provider id (rows) -> gen_ai.provider.name (semantic conventions' well-known values)
PROVIDER_NAMES = {
    "openai": "openai", "anthropic": "anthropic", "google": "gcp.gemini", "google-vertex": "gcp.vertex_ai",
    "azure": "azure.ai.openai", "aws": "aws.bedrock", "mistral": "mistral_ai", "groq": "groq",
    "deepseek": "deepseek", "x-ai": "x_ai", "perplexity": "perplexity", "cohere": "cohere",
}


class OtelConfigError(ValueError):
    pass


def parse_otel(table: Any, where: str) -> dict[str, Any] | None:
    """``[otel]``: endpoint (required to turn it on), interval_s, timeout_s, headers."""
    if not table:
        return None
    if not isinstance(table, dict):
        raise OtelConfigError(f"{where}: otel must be a table like [otel]")
    unknown = set(table) - {"endpoint", "interval_s", "timeout_s", "headers"}
    if unknown:
        raise OtelConfigError(f"{where}: unknown key otel.{sorted(unknown)[0]} (keys: endpoint, interval_s, "
                              f"timeout_s, headers)")
    endpoint = table.get("endpoint", "")
    if endpoint == "":
        return None
    if not isinstance(endpoint, str) or not re.match(r"^https?://[^\s/]+\S*$", endpoint) or len(endpoint) > 2000:
        raise OtelConfigError(f"{where}: otel.endpoint must be an http(s) URL like "
                              f"\"http://127.0.0.1:4318/v1/metrics\"")
    out: dict[str, Any] = {"endpoint": endpoint}
    for key, default, low, high in (("interval_s", DEFAULT_INTERVAL_S, 1, 3600), ("timeout_s", 10, 1, 120)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise OtelConfigError(f"{where}: otel.{key} must be a whole number of seconds, {low}-{high}")
        out[key] = value
    headers = table.get("headers", {})
    if (not isinstance(headers, dict) or len(headers) > 20
            or not all(isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9-]{1,100}", k)
                       and len(v) <= 4000 and "\n" not in v and "\r" not in v for k, v in headers.items())):
        raise OtelConfigError(f"{where}: otel.headers must be a table of at most 20 header = \"value\" strings, "
                              f"like {{ authorization = \"Bearer ...\" }}")
    out["headers"] = dict(headers)
    return out


def operation_name(endpoint: str) -> str:
    path = endpoint.rstrip("/")
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/chat/completions") or path.endswith("/responses") or path.endswith("/messages"):
        return "chat"
    if path.endswith("/completions"):
        return "text_completion"
    if path.endswith(":generateContent") or path.endswith(":streamGenerateContent"):
        return "generate_content"
    return "chat"


def attributes(row: dict[str, Any]) -> dict[str, Any]:
    provider = str(row["provider"])
    host, _, port = str(row["host"]).partition(":")
    attrs: dict[str, Any] = {
        "gen_ai.provider.name": PROVIDER_NAMES.get(provider.lower(), provider),
        "gen_ai.operation.name": operation_name(str(row["endpoint"])),
        # Rows keep one model: the response's (the request's when the response named none).
        "gen_ai.request.model": str(row["model"]),
        "gen_ai.response.model": str(row["model"]),
        "server.address": host,
    }
    if port.isascii() and port.isdigit() and port != "443":
        attrs["server.port"] = int(port)
    status = int(row["status"])
    if status >= 400:
        attrs["error.type"] = str(status)
    elif status == 0 or "incomplete" in str(row.get("flags") or "").split():
        attrs["error.type"] = "_OTHER"
    return attrs


class OtelListener:
    """RowFeed listener: rows into a bounded queue (writer thread; never blocks)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_MAX)
        self.dropped = 0

    def on_rows(self, store: Any, rows: list[dict[str, Any]], watermark: int) -> None:
        for row in rows:
            try:
                self.queue.put_nowait(row)
            except queue.Full:
                self.dropped += 1


class Recorder:
    """The OTel SDK side: a MeterProvider with an OTLP/HTTP exporter and the GenAI instruments."""

    def __init__(self, settings: dict[str, Any], machine_id: str, version: str) -> None:
        try:
            import requests
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
        except ImportError:
            raise RuntimeError("[otel] is set but the otel extra is not installed: "
                               "pip install 'halton-meter[otel]', then halton-meter restart") from None
        session = requests.Session()
        session.trust_env = False  # never through HTTPS_PROXY: it may point at this daemon
        exporter = OTLPMetricExporter(endpoint=settings["endpoint"], headers=settings["headers"],
                                      timeout=settings["timeout_s"], session=session)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=settings["interval_s"] * 1000,
                                               export_timeout_millis=settings["timeout_s"] * 1000)
        resource = Resource.create({"service.name": "halton-meter", "service.version": version,
                                    "service.instance.id": machine_id})
        self.provider = MeterProvider(metric_readers=[reader], resource=resource)
        meter = self.provider.get_meter("halton-meter", version)
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.cost = meter.create_counter(
            "gen_ai.usage.cost", unit="USD",
            description="Cost of GenAI calls in US dollars (not a semantic convention).")

    def record(self, row: dict[str, Any]) -> None:
        attrs = attributes(row)
        for kind in ("input", "output"):
            value = row.get(f"{kind}_tokens")
            if value is not None:
                self.tokens.record(int(value), {**attrs, "gen_ai.token.type": kind})
        self.duration.record(max(0, int(row["latency_ms"])) / 1000.0, attrs)
        if row.get("cost_usd") is not None:
            self.cost.add(float(row["cost_usd"]), attrs)

    def shutdown(self) -> None:
        self.provider.shutdown()


class OtelComponent:
    name = "otel"

    def __init__(self) -> None:
        self.listener: OtelListener | None = None
        self.recorded = 0
        self.endpoint: str | None = None

    def should_run(self, config: Any, home: Any) -> bool:
        return getattr(config, "otel", None) is not None

    async def run(self, ctx: Any) -> None:
        import anyio

        settings = ctx.config.otel
        recorder = await anyio.to_thread.run_sync(lambda: Recorder(settings, ctx.machine_id, ctx.version))
        listener = self.listener = OtelListener()
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    row = listener.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    recorder.record(row)
                    self.recorded += 1
                except Exception:
                    log.exception("could not record a row for OpenTelemetry")

        thread = threading.Thread(target=drain, name="hm-otel", daemon=True)
        thread.start()
        ctx.outputs.feed.listeners.append(listener)
        self.endpoint = settings["endpoint"]
        log.info("exporting GenAI metrics to %s every %ds", settings["endpoint"], settings["interval_s"])
        try:
            await anyio.sleep_forever()
        finally:
            ctx.outputs.feed.listeners.remove(listener)
            stop.set()
            thread.join(2)
            recorder.shutdown()  # a last export of what was recorded
            self.endpoint = None

    def health(self) -> dict[str, Any]:
        listener = self.listener
        return {"endpoint": self.endpoint, "recorded": self.recorded,
                "queued": listener.queue.qsize() if listener else 0,
                "dropped": listener.dropped if listener else 0}


def make_component() -> OtelComponent:
    return OtelComponent()
