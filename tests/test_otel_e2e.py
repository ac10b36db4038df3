"""OpenTelemetry GenAI metrics from a real daemon to a local OTLP/HTTP receiver,
decoded with opentelemetry-proto."""

from __future__ import annotations

import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from hm_agent.otel import OtelConfigError, attributes, parse_otel

from .support.daemon import capture_host_config, running_daemon
from .support.fake_providers import FakeProviders
from .support.receiver import Receiver
from .support.tls import make_ca


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


def decode(body: bytes) -> dict[str, tuple[str, list[tuple[dict[str, Any], Any]]]]:
    """{metric name: (unit, [(attributes, data point)])} of one export."""
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    out: dict[str, tuple[str, list[tuple[dict[str, Any], Any]]]] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                points = [({a.key: _value(a.value) for a in p.attributes}, p) for p in getattr(m, kind).data_points]
                out[m.name] = (m.unit, points)
    return out


@pytest.mark.slow
def test_genai_metrics_reach_an_otlp_receiver(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    with FakeProviders(ca) as upstream, Receiver() as collector:
        host = f"localhost:{upstream.port}"
        config = (capture_host_config([host]) + f'\n[otel]\nendpoint = "{collector.url("/v1/metrics")}"\n'
                  "interval_s = 1\n")
        with running_daemon(tmp_path / "home", upstream_ca=ca.ca_path, extra_config=config) as d:
            deadline = time.monotonic() + 15
            while (d.status()["components"].get("otel", {}).get("detail") or {}).get("endpoint") is None:
                assert time.monotonic() < deadline, d.status()["components"]
                time.sleep(0.1)
            http = httpx.Client(proxy=d.proxy_url, verify=ssl.create_default_context(cafile=str(d.ca_cert_path)))
            oai = openai.OpenAI(api_key="sk-test", base_url=f"{upstream.base_url}/v1", http_client=http,
                                max_retries=0)
            oai.chat.completions.create(model="gpt-4o", messages=[])
            oai.embeddings.create(model="text-embedding-3-small", input="x")
            with pytest.raises(openai.RateLimitError):
                oai.chat.completions.create(model="error-rate", messages=[])
            anthropic.Anthropic(api_key="sk-ant-test", base_url=upstream.base_url, http_client=http,
                                max_retries=0).messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                                               messages=[])
            assert d.wait_rows(4) == 4
            with sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True) as conn:
                rows = conn.execute("SELECT model, input_tokens, output_tokens, cost_usd FROM requests").fetchall()

            def complete() -> dict[str, Any] | None:
                for post in reversed(collector.posts):
                    found = decode(post.body)
                    points = found.get("gen_ai.client.operation.duration", ("", []))[1]
                    if sum(p.count for _, p in points) == 4:
                        return found
                return None

            deadline = time.monotonic() + 20
            while (metrics := complete()) is None:
                assert time.monotonic() < deadline, f"{len(collector.posts)} exports, none with all 4 calls"
                time.sleep(0.2)

    assert {p.path for p in collector.posts} == {"/v1/metrics"}
    assert collector.posts[-1].headers["content-type"] == "application/x-protobuf"
    unit, tokens = metrics["gen_ai.client.token.usage"]
    assert unit == "{token}"
    by_model = {(a["gen_ai.request.model"], a["gen_ai.token.type"]): p.sum for a, p in tokens}
    for model, inp, out, _ in rows:
        if inp is not None:
            assert by_model[(model, "input")] == inp
        if out is not None:
            assert by_model[(model, "output")] == out
    some = tokens[0][0]
    assert some["gen_ai.provider.name"] == host and some["server.address"] == "localhost"
    assert some["server.port"] == upstream.port and some["gen_ai.response.model"] == some["gen_ai.request.model"]
    assert {a["gen_ai.operation.name"] for a, _ in tokens} == {"chat", "embeddings"}

    unit, durations = metrics["gen_ai.client.operation.duration"]
    assert unit == "s"
    errors = [a for a, _ in durations if "error.type" in a]
    assert [e["error.type"] for e in errors] == ["429"]
    unit, cost = metrics["gen_ai.usage.cost"]
    assert unit == "USD"
    assert sum(p.as_double for _, p in cost) == pytest.approx(sum(float(c) for *_, c in rows if c is not None))


def test_attributes_use_the_semantic_conventions_names() -> None:
    row = {"provider": "google", "host": "generativelanguage.googleapis.com", "model": "gemini-2.5-flash",
           "endpoint": "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "status": 200, "flags": ""}
    assert attributes(row) == {
        "gen_ai.provider.name": "gcp.gemini", "gen_ai.operation.name": "generate_content",
        "gen_ai.request.model": "gemini-2.5-flash", "gen_ai.response.model": "gemini-2.5-flash",
        "server.address": "generativelanguage.googleapis.com"}
    azure = attributes(row | {"provider": "azure", "endpoint": "/openai/deployments/x/embeddings", "status": 500})
    assert azure["gen_ai.provider.name"] == "azure.ai.openai" and azure["gen_ai.operation.name"] == "embeddings"
    assert azure["error.type"] == "500"
    assert attributes(row | {"status": 200, "flags": "incomplete"})["error.type"] == "_OTHER"


@pytest.mark.parametrize("table", [
    {"endpoint": "ftp://x"}, {"endpoint": "http://x", "interval_s": 0}, {"endpoint": "http://x", "headers": []},
    {"endpoint": "http://x", "headers": {"bad header": "v"}}, {"endpoint": "http://x", "colour": "red"},
])
def test_bad_otel_config(table: dict[str, Any]) -> None:
    with pytest.raises(OtelConfigError):
        parse_otel(table, "config.toml")
