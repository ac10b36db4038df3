"""Prometheus /metrics of a real daemon, parsed with prometheus_client's parser,
against `halton-meter report --json` over the same rows."""

from __future__ import annotations

import json
import ssl
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support.daemon import capture_host_config, free_port, run_cli, running_daemon
from .support.fake_providers import FakeProviders
from .support.tls import make_ca

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[str, Any]:
    text = httpx.get(url, timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def wait_for_metrics(url: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered")
        time.sleep(0.1)


def test_metrics_parse_and_equal_the_report(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with FakeProviders(ca) as upstream, running_daemon(
        tmp_path / "home", upstream_ca=ca.ca_path,
        extra_config=capture_host_config([f"localhost:{upstream.port}"])
        + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        + '[[budgets]]\nname = "all"\nlimit_usd = 1000\n',
    ) as d:
        wait_for_metrics(url)
        http = httpx.Client(proxy=d.proxy_url, verify=ssl.create_default_context(cafile=str(d.ca_cert_path)))
        oai = openai.OpenAI(api_key="sk-test", base_url=f"{upstream.base_url}/v1", http_client=http, max_retries=0)
        oai.chat.completions.create(model="gpt-4o", messages=[])
        list(oai.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True,
                                         stream_options={"include_usage": True}))
        list(oai.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True))
        oai.chat.completions.create(model="acme-private-1", messages=[])  # a price nobody knows
        with pytest.raises(openai.RateLimitError):
            oai.chat.completions.create(model="error-rate", messages=[])
        anthropic.Anthropic(api_key="sk-ant-test", base_url=upstream.base_url, http_client=http,
                            max_retries=0).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[])
        assert d.wait_rows(6) == 6

        deadline = time.monotonic() + 10
        while True:
            families = scrape(url)
            if sum(s.value for s in families["halton_meter_requests"].samples) == 6 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        rep = json.loads(run_cli(d.home, "report", "--json", "--since", "1d", env=d.env).stdout)

    by_model = {g["model"]: g for g in rep["groups"]}
    calls: dict[str, float] = defaultdict(float)
    classes = set()
    for s in families["halton_meter_requests"].samples:
        assert s.name == "halton_meter_requests_total"
        calls[s.labels["model"]] += s.value
        classes.add(s.labels["status_class"])
        assert s.labels["provider"] == f"localhost:{upstream.port}"
    assert calls == {m: g["calls"] for m, g in by_model.items()}
    assert classes == {"2xx", "4xx"}

    tokens: dict[tuple[str, str], float] = defaultdict(float)
    for s in families["halton_meter_tokens"].samples:
        tokens[(s.labels["model"], s.labels["type"])] += s.value
    for model, g in by_model.items():
        for kind in ("input", "output", "cache_read", "cache_write", "reasoning"):
            assert tokens.get((model, kind), 0) == g[f"{kind}_tokens"], (model, kind)

    cost = {s.labels["model"]: s.value for s in families["halton_meter_cost_usd"].samples}
    assert cost == {m: float(Decimal(g["cost_usd"])) for m, g in by_model.items() if g["cost_usd"] is not None}
    unpriced = sum(s.value for s in families["halton_meter_unpriced_requests"].samples)
    assert unpriced == rep["total"]["unknown_price_calls"] == 1  # the acme model (not the 429: an error)

    hist = families["halton_meter_request_duration_seconds"]
    assert hist.type == "histogram"
    assert sum(s.value for s in hist.samples if s.name.endswith("_count")) == 6
    assert families["halton_meter_rows_unsynced"].samples[0].value == 6
    state = {s.labels["halton_meter_sync_state"]: s.value for s in families["halton_meter_sync_state"].samples}
    assert state["NOT-CONFIGURED"] == 1 and sum(state.values()) == 1
    spend = families["halton_meter_budget_spend_usd"].samples[0]
    assert spend.labels == {"budget": "all", "period": "month"}
    assert spend.value == pytest.approx(float(Decimal(rep["total"]["cost_usd"])))
    # No label carries a user, an e-mail or a key.
    names = {label for f in families.values() for s in f.samples for label in s.labels}
    assert names <= {"provider", "model", "status_class", "type", "le", "halton_meter_sync_state", "budget", "period"}


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "192.168.1.5:9464", "127.0.0.1", "127.0.0.1:99999"])
def test_metrics_listen_must_be_loopback(tmp_path: Path, listen: str) -> None:
    from hm_agent.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="metrics.listen must be a loopback address"):
        parse_config(f'[metrics]\nlisten = "{listen}"\n', tmp_path / "config.toml")
