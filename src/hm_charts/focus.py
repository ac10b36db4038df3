"""FOCUS 1.2 cost and usage lines: the columns and values both exports share.

``halton-meter report --format focus`` (hm_cli.focus) and the backend's
``GET /v1/usage?format=focus`` (hm_cloud.api) aggregate their rows their own
way (Python over SQLite rows, SQL over the workspace's rows) and build each
line here, so the two CSVs have the same columns and values. Pure: no I/O, no
clock, no imports from hm_agent, hm_cli or hm_cloud. Escaping outside strings
for spreadsheets is the caller's (``OUTSIDE``, with hm_charts.cells).

One line per UTC day, provider, model, project and machine; calls whose price
is unknown get their own line with empty cost columns and
``x_CostUnknown=true``: never $0 (a deliberate deviation from FOCUS, whose
cost columns are never null).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

COLUMNS = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency",
    "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ServiceCategory", "ServiceName", "PublisherName", "ProviderName", "InvoiceIssuerName",
    "SkuId", "ConsumedQuantity", "ConsumedUnit", "PricingQuantity", "PricingUnit",
    "x_InputTokens", "x_OutputTokens", "x_CacheReadTokens", "x_CacheWriteTokens", "x_ReasoningTokens",
    "x_Calls", "x_CostUnknown", "x_Provider", "x_Machine", "x_Project",
)

# Columns holding outside strings (models, providers, projects, machine ids):
# the ones a CSV writer must escape for spreadsheets.
OUTSIDE = ("ChargeDescription", "ServiceName", "PublisherName", "ProviderName", "InvoiceIssuerName",
           "SkuId", "x_Provider", "x_Machine", "x_Project")

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

# row column -> FOCUS extension column
TOKENS = (("input_tokens", "x_InputTokens"), ("output_tokens", "x_OutputTokens"),
          ("cache_read_tokens", "x_CacheReadTokens"), ("cache_write_tokens", "x_CacheWriteTokens"),
          ("reasoning_tokens", "x_ReasoningTokens"))


def service_of(provider: str) -> tuple[str, str]:
    return SERVICES.get(provider.lower(), (provider, provider))


def _utc(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _after(day: date, month: bool = False) -> str:
    """The start of the next day (or month) of ``day``: for 9999-12 that is year 10000, past
    what ``date`` holds (a row dated 9999-12-31 made the cloud's FOCUS export a 500)."""
    if month:
        year, number = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        return f"{year:04d}-{number:02d}-01T00:00:00Z"
    return _utc(day + timedelta(days=1)) if day < date.max else "10000-01-01T00:00:00Z"


def focus_line(day_text: str, provider: str, model: str, project: str | None, machine: str | None,
               cost: str | None, calls: int, tokens: Mapping[str, int]) -> dict[str, object]:
    """One FOCUS line. ``cost`` is the exact decimal string of the line's known
    cost, None when its price is unknown; ``tokens`` by row column (TOKENS)."""
    day = date.fromisoformat(day_text)
    month = day.replace(day=1)
    service, publisher = service_of(provider)
    billed = "" if cost is None else cost
    quantity = tokens.get("input_tokens", 0) + tokens.get("output_tokens", 0)
    return {
        "BilledCost": billed, "EffectiveCost": billed, "ListCost": billed, "ContractedCost": billed,
        "BillingCurrency": "USD",
        "BillingPeriodStart": _utc(month), "BillingPeriodEnd": _after(month, month=True),
        "ChargePeriodStart": _utc(day), "ChargePeriodEnd": _after(day),
        "ChargeCategory": "Usage", "ChargeClass": "", "ChargeFrequency": "Usage-Based",
        "ChargeDescription": f"{model} on {service}",
        "ServiceCategory": "AI and Machine Learning", "ServiceName": service,
        "PublisherName": publisher, "ProviderName": publisher, "InvoiceIssuerName": publisher,
        "SkuId": model, "ConsumedQuantity": quantity, "ConsumedUnit": "Tokens",
        "PricingQuantity": quantity, "PricingUnit": "Tokens",
        **{name: tokens.get(column, 0) for column, name in TOKENS},
        "x_Calls": calls, "x_CostUnknown": "true" if cost is None else "false",
        "x_Provider": provider, "x_Machine": machine or "", "x_Project": project or "",
    }
