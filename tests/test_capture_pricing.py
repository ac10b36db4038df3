"""Pricing: the cost equals genai-prices' own calculation for the same tokens."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import genai_prices
import pytest
from genai_prices.types import calc_mtok_price

from hm_agent.capture import CapturedUsage
from hm_agent.capture.pricing import flags_after_pricing, price

from .test_capture_parsers import EXPECTED, run

VERSION = f"genai-prices-{genai_prices.__version__}"


def genai_total(usage: CapturedUsage) -> Decimal:
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
        ),
        usage.model, provider_id=usage.provider,
    )
    return calc.total_price


PRICED = sorted(n for n, s in EXPECTED.items() if s["input_tokens"] is not None)


@pytest.mark.parametrize("name", PRICED)
def test_cost_equals_genai_prices(name: str) -> None:
    usage = run(name)
    cost, version = price(usage, [])
    assert version == VERSION
    assert cost is not None
    expected = genai_total(usage)
    if usage.cache_write_1h_tokens:
        calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=usage.input_tokens), usage.model,
                                       provider_id="anthropic")
        n, total = usage.cache_write_1h_tokens, usage.input_tokens or 0
        expected += 2 * calc_mtok_price(calc.model_price.input_mtok, n, total) - calc_mtok_price(
            calc.model_price.cache_write_mtok, n, total
        )
    assert Decimal(cost) == expected
    assert "E" not in cost and "e" not in cost


def test_anthropic_one_hour_writes_cost_twice_base_input() -> None:
    base = CapturedUsage("anthropic", "claude-sonnet-4-5", "api.anthropic.com", "/v1/messages", 200, False,
                         input_tokens=100_000, output_tokens=0, cache_read_tokens=0,
                         cache_write_tokens=100_000)  # below the 200k tier
    five_min, _ = price(base)
    one_hour, _ = price(replace(base, cache_write_1h_tokens=100_000))
    assert Decimal(five_min) == Decimal("0.375")  # 1.25 x $3/MTok
    assert Decimal(one_hour) == Decimal("0.6")  # 2 x $3/MTok


def test_tiered_price_above_200k_prompt() -> None:
    usage = run("gemini_stream.json")  # 250k prompt tokens: gemini-2.5-pro's upper tier
    cost, _ = price(usage)
    low = replace(usage, input_tokens=100_000)
    assert Decimal(cost) == genai_total(usage)
    assert Decimal(cost) / 250_000 > Decimal(price(low)[0]) / 100_000


def test_unknown_model_is_none_and_flagged() -> None:
    usage = CapturedUsage("localhost:8000", "my-private-llm", "localhost:8000", "/v1/chat/completions",
                          200, False, input_tokens=10, output_tokens=5)
    cost, version = price(usage, [])
    assert cost is None and version == VERSION
    assert flags_after_pricing(usage, cost, version) == {"unknown_model"}


def test_nothing_to_price() -> None:
    usage = CapturedUsage("openai", "gpt-4o", "api.openai.com", "/v1/chat/completions", 200, True,
                          flags=frozenset({"usage_missing"}))
    cost, version = price(usage, [])
    assert (cost, version) == (None, "unpriced")
    assert flags_after_pricing(usage, cost, version) == {"usage_missing"}


def test_override() -> None:
    usage = CapturedUsage("localhost:8000", "my-private-llm", "localhost:8000", "/v1/chat/completions",
                          200, False, input_tokens=1_000_000, output_tokens=2_000_000,
                          cache_read_tokens=400_000)
    overrides = [
        {"model": "other", "input_mtok": 100, "output_mtok": 100},
        {"model": "My-Private-LLM", "input_mtok": 1, "output_mtok": "2.5", "cache_read_mtok": 0.1},
    ]
    cost, version = price(usage, overrides)
    assert version == "override"
    assert Decimal(cost) == Decimal("0.6") + Decimal("0.04") + Decimal("5")
    wrong_provider = [{"model": "my-private-llm", "provider": "groq", "input_mtok": 1, "output_mtok": 1}]
    assert price(usage, wrong_provider)[0] is None


def test_reseller_and_host_named_providers_fall_back_to_model_match() -> None:
    usage = CapturedUsage("localhost:9443", "gpt-4o-2024-08-06", "localhost:9443", "/v1/chat/completions",
                          200, False, input_tokens=1000, output_tokens=100)
    cost, _ = price(usage)
    assert Decimal(cost) == genai_total(replace(usage, provider="openai"))
