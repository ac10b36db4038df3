"""`halton-meter report --format focus`: FOCUS 1.2 columns and values; its total is the report's."""

from __future__ import annotations

import csv
import io
import json
import uuid
from decimal import Decimal
from pathlib import Path

from hm_agent.store import Store, StoredRow

from .support.daemon import daemon_env, run_cli
from .support.seed import seed_rows

REQUIRED = ("BilledCost", "EffectiveCost", "ListCost", "BillingCurrency", "ChargePeriodStart", "ChargePeriodEnd",
            "ChargeCategory", "ServiceCategory", "ServiceName", "PublisherName", "SkuId", "ConsumedQuantity",
            "ConsumedUnit", "x_InputTokens", "x_OutputTokens", "x_CacheReadTokens", "x_CacheWriteTokens",
            "x_ReasoningTokens", "x_Machine", "x_Project")


def extra(ts: str, cost: str | None, model: str, project: str | None) -> StoredRow:
    return StoredRow(
        id=str(uuid.uuid4()), ts=ts, provider="anthropic", model=model, host="api.anthropic.com",
        endpoint="/v1/messages", status=200, stream=True, input_tokens=100, output_tokens=7,
        cache_read_tokens=50, cache_write_tokens=None, reasoning_tokens=None, cost_usd=cost,
        price_version="test", latency_ms=5, ttfb_ms=1, flags="", row_json=b"{}", project=project,
    )


def cli(home: Path, *args: str) -> str:
    out = run_cli(home, *args, env=daemon_env(home))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_focus_csv_columns_values_and_total(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "machine.json").write_text('{"machine_id": "54094ccf-3203-43c5-bf84-aee66aca9f18"}')
    db = home / "db.sqlite"
    seed_rows(db, 400, day="2026-11-23", seed=1)
    seed_rows(db, 300, day="2026-11-24", seed=2)
    with Store(db) as store:
        store.insert_rows([
            extra("2026-11-24T10:00:00.000Z", "0.5", "claude-sonnet-4-5", "acme"),
            extra("2026-11-24T11:00:00.000Z", "0.25", "claude-sonnet-4-5", "acme"),
            extra("2026-11-24T12:00:00.000Z", None, "acme-private-1", "acme"),  # price unknown
        ])
    span = ("--from", "2026-11-23", "--to", "2026-11-24")
    rows = list(csv.DictReader(io.StringIO(cli(home, "report", *span, "--format", "focus"))))
    rep = json.loads(cli(home, "report", *span, "--json"))

    assert set(REQUIRED) <= set(rows[0])
    assert {r["BillingCurrency"] for r in rows} == {"USD"}
    assert {r["ChargeCategory"] for r in rows} == {"Usage"}
    assert {r["ServiceCategory"] for r in rows} == {"AI and Machine Learning"}
    assert {r["ConsumedUnit"] for r in rows} == {"Tokens"}
    assert {r["x_Machine"] for r in rows} == {"54094ccf-3203-43c5-bf84-aee66aca9f18"}
    assert {(r["ServiceName"], r["PublisherName"]) for r in rows} == {
        ("OpenAI API", "OpenAI"), ("Anthropic API", "Anthropic"), ("Gemini API", "Google")}
    priced = [r for r in rows if r["x_CostUnknown"] == "false"]
    total = sum((Decimal(r["BilledCost"]) for r in priced), Decimal(0))
    assert total == Decimal(rep["total"]["cost_usd"])
    assert all(r["BilledCost"] == r["EffectiveCost"] == r["ListCost"] for r in rows)
    assert sum(int(r["x_Calls"]) for r in rows) == rep["total"]["calls"] == 703
    for kind in ("input", "output", "cache_read", "cache_write", "reasoning"):
        name = "x_" + "".join(p.capitalize() for p in kind.split("_")) + "Tokens"
        assert sum(int(r[name]) for r in rows) == rep["total"][f"{kind}_tokens"], kind
    assert all(int(r["ConsumedQuantity"]) == int(r["x_InputTokens"]) + int(r["x_OutputTokens"]) for r in rows)

    acme = [r for r in rows if r["x_Project"] == "acme"]
    assert [(r["SkuId"], r["BilledCost"], r["x_Calls"], r["x_CostUnknown"]) for r in acme] == [
        ("acme-private-1", "", "1", "true"), ("claude-sonnet-4-5", "0.75", "2", "false")]
    day = next(r for r in acme if r["SkuId"] == "claude-sonnet-4-5")
    assert (day["ChargePeriodStart"], day["ChargePeriodEnd"]) == ("2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z")
    assert (day["BillingPeriodStart"], day["BillingPeriodEnd"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")

    # --where narrows it like the report.
    only = list(csv.DictReader(io.StringIO(cli(home, "report", *span, "--where", "project=acme",
                                               "--format", "focus"))))
    assert only == acme
    empty = cli(tmp_path / "nothing", "report", "--format", "focus")
    assert empty.splitlines() == [",".join(next(csv.reader(io.StringIO(empty))))]
