"""`report --format focus`: the local spend as a FOCUS 1.2 cost and usage CSV.

One line per UTC day, provider, model and project (the FinOps Open Cost and
Usage Specification's charge period is the UTC day). Costs are the exact
decimal sums the report shows; the total of ``BilledCost`` equals the
report's ``cost_usd`` over the same range. Calls whose price is unknown get
their own line with empty cost columns and ``x_CostUnknown=true``: never $0
(a deliberate deviation from FOCUS, whose cost columns are never null).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from ._ui import csv_cell

COLUMNS = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency",
    "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ServiceCategory", "ServiceName", "PublisherName", "ProviderName", "InvoiceIssuerName",
    "SkuId", "ConsumedQuantity", "ConsumedUnit", "PricingQuantity", "PricingUnit",
    "x_InputTokens", "x_OutputTokens", "x_CacheReadTokens", "x_CacheWriteTokens", "x_ReasoningTokens",
    "x_Calls", "x_CostUnknown", "x_Provider", "x_Machine", "x_Project",
)

# provider id (as rows have it) -> (ServiceName, PublisherName)
SERVICES = {
    "openai": ("OpenAI API", "OpenAI"),
    "anthropic": ("Anthropic API", "Anthropic"),
    "google": ("Gemini API", "Google"),
    "google-vertex": ("Vertex AI", "Google"),
    "azure": ("Azure OpenAI", "Microsoft"),
    "aws": ("Amazon Bedrock", "Amazon Web Services"),
    "mistral": ("Mistral AI API", "Mistral AI"),
    "groq": ("GroqCloud", "Groq"),
    "deepseek": ("DeepSeek API", "DeepSeek"),
    "x-ai": ("xAI API", "xAI"),
    "openrouter": ("OpenRouter", "OpenRouter"),
    "together": ("Together AI", "Together AI"),
    "fireworks": ("Fireworks AI", "Fireworks AI"),
    "perplexity": ("Perplexity API", "Perplexity"),
    "cerebras": ("Cerebras Inference", "Cerebras"),
}
_TOKENS = (("input_tokens", "x_InputTokens"), ("output_tokens", "x_OutputTokens"),
           ("cache_read_tokens", "x_CacheReadTokens"), ("cache_write_tokens", "x_CacheWriteTokens"),
           ("reasoning_tokens", "x_ReasoningTokens"))


@dataclass
class _Line:
    cost: Decimal = Decimal(0)
    calls: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: {c: 0 for c, _ in _TOKENS})


def service_of(provider: str) -> tuple[str, str]:
    return SERVICES.get(provider.lower(), (provider, provider))


def _utc(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def focus_lines(rows: Any, machine: str | None, keys: Any = None,
                where: list[tuple[str, str | None]] | None = None) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str, str | None, bool], _Line] = {}
    for row in rows:
        if where and keys is not None and any(keys.get(row, dim) != value for dim, value in where):
            continue
        unknown = row["cost_usd"] is None
        key = (row["day"], row["provider"], row["model"], row["project"], unknown)
        line = groups.setdefault(key, _Line())
        line.calls += 1
        if not unknown:
            line.cost += Decimal(row["cost_usd"])
        for column, _ in _TOKENS:
            if row[column] is not None:
                line.tokens[column] += int(row[column])
    out = []
    for (day_text, provider, model, project, unknown), line in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or "", kv[0][4])):
        day = date.fromisoformat(day_text)
        month = day.replace(day=1)
        service, publisher = service_of(provider)
        cost = "" if unknown else format(line.cost, "f")
        quantity = line.tokens["input_tokens"] + line.tokens["output_tokens"]
        out.append({
            "BilledCost": cost, "EffectiveCost": cost, "ListCost": cost, "ContractedCost": cost,
            "BillingCurrency": "USD",
            "BillingPeriodStart": _utc(month), "BillingPeriodEnd": _utc((month + timedelta(days=32)).replace(day=1)),
            "ChargePeriodStart": _utc(day), "ChargePeriodEnd": _utc(day + timedelta(days=1)),
            "ChargeCategory": "Usage", "ChargeClass": "", "ChargeFrequency": "Usage-Based",
            "ChargeDescription": f"{model} on {service}",
            "ServiceCategory": "AI and Machine Learning", "ServiceName": service,
            "PublisherName": publisher, "ProviderName": publisher, "InvoiceIssuerName": publisher,
            "SkuId": model, "ConsumedQuantity": quantity, "ConsumedUnit": "Tokens",
            "PricingQuantity": quantity, "PricingUnit": "Tokens",
            **{name: line.tokens[column] for column, name in _TOKENS},
            "x_Calls": line.calls, "x_CostUnknown": "true" if unknown else "false",
            "x_Provider": provider, "x_Machine": machine or "", "x_Project": project or "",
        })
    return out


def focus_csv(home: Any, from_day: str, to_day: str, where: list[tuple[str, str | None]]) -> str:
    from hm_agent.home import HomeError, paths, read_machine_id

    from .report import _Keys, read_rows

    try:
        machine = read_machine_id(paths(home))
    except HomeError:
        machine = None
    lines = focus_lines(read_rows(home, from_day, to_day), machine, _Keys(), where)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in lines:  # outside strings (models, providers, projects) without control characters
        writer.writerow({k: csv_cell(v) for k, v in line.items()})
    return buf.getvalue()
