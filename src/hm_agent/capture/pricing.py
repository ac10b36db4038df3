"""Cost of a captured call, from genai-prices (or a `[[pricing.override]]`).

Runs on the writer thread, never the proxy thread: genai-prices is imported
lazily on first use because it pulls in pydantic.

Result of `price`: `(cost_usd, price_version)`.
- cost_usd: a decimal string, or None when the price is unknown.
- price_version: "genai-prices-0.0.61" when genai-prices was asked (also when
  it did not know the model), "genai-prices-0.0.61+data-YYYY-MM-DD-<hash>"
  with data from `halton-meter prices update` (hm_agent/prices.py),
  "override" for a config override, "unpriced" when there was nothing to
  price (an error response, usage not reported).

`flags_after_pricing` says which flags pricing adds to the row
("unknown_model": there were tokens, but no price for the model).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

log = logging.getLogger("hm_agent.capture")

UNPRICED = "unpriced"
OVERRIDE = "override"

_lock = threading.Lock()
_genai: Any = None
_known_providers: frozenset[str] = frozenset()
_version = "genai-prices"
_data_stamp: float | None = None  # mtime of <home>/prices/current when last loaded
_next_check = 0.0
CHECK_EVERY_S = 2.0


def _load() -> Any:
    global _genai
    if _genai is None:
        with _lock:
            if _genai is None:
                import genai_prices

                _use_data(genai_prices)
                _genai = genai_prices
    else:
        _maybe_reload()
    return _genai


def _use_data(genai_prices: Any) -> None:
    """The data `halton-meter prices update` stored in the home, else the bundled data."""
    global _known_providers, _version, _data_stamp, _next_check
    from genai_prices import data_snapshot

    from ..home import paths
    from ..prices import PricesError, current_mtime, load_current

    hp = paths()
    _data_stamp = current_mtime(hp)
    _next_check = time.monotonic() + CHECK_EVERY_S
    stored = None
    try:
        stored = load_current(hp)
    except PricesError as exc:
        log.warning("stored price data unusable (%s); using the data bundled with genai-prices", exc)
    base = f"genai-prices-{genai_prices.__version__}"
    if stored is not None:
        label, providers = stored
        data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers, from_auto_update=True))
        _version = f"{base}+{label}"
    else:
        data_snapshot.set_custom_snapshot(None)
        _version = base
    _known_providers = frozenset(p.id for p in data_snapshot.get_snapshot().providers)


def _maybe_reload() -> None:
    """Pick up a `prices update` made while this process runs (a stat every few seconds)."""
    global _next_check
    now = time.monotonic()
    if now < _next_check:
        return
    from ..home import paths
    from ..prices import current_mtime

    _next_check = now + CHECK_EVERY_S
    if current_mtime(paths()) != _data_stamp:
        with _lock:
            _use_data(_genai)


def reload_data() -> None:
    """Use the newest stored price data now (the CLI, after an update)."""
    with _lock:
        if _genai is not None:
            _use_data(_genai)


def price_version() -> str:
    _load()
    return _version


def decimal_string(value: Decimal) -> str:
    """Plain notation, no exponent, no trailing zeros ("0.0001375", "0")."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _has_tokens(usage: Any) -> bool:
    return getattr(usage, "input_tokens", None) is not None or getattr(usage, "output_tokens", None) is not None


def _as_decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _matching_override(usage: Any, overrides: Iterable[Any] | None) -> Mapping[str, Any] | None:
    model = str(getattr(usage, "model", "")).lower()
    provider = str(getattr(usage, "provider", "")).lower()
    for entry in overrides or ():
        if not isinstance(entry, Mapping):
            continue
        if str(entry.get("model", "")).lower() != model:
            continue
        wanted = entry.get("provider")
        if wanted and str(wanted).lower() not in (provider, str(getattr(usage, "host", "")).lower()):
            continue
        return entry
    return None


def _field(entry: Mapping[str, Any], name: str) -> Decimal | None:
    """USD per million tokens: `input_mtok` (genai-prices' name) or `input_per_mtok`."""
    value = entry.get(f"{name}_mtok")
    return _as_decimal(value if value is not None else entry.get(f"{name}_per_mtok"))


def _override_cost(usage: Any, entry: Mapping[str, Any]) -> Decimal | None:
    input_mtok = _field(entry, "input")
    output_mtok = _field(entry, "output")
    if input_mtok is None and output_mtok is None:
        return None
    input_mtok = input_mtok or Decimal(0)
    output_mtok = output_mtok or Decimal(0)
    read_mtok = _field(entry, "cache_read")
    write_mtok = _field(entry, "cache_write")
    read_mtok = input_mtok if read_mtok is None else read_mtok
    write_mtok = input_mtok if write_mtok is None else write_mtok
    total_in = usage.input_tokens or 0
    reads = usage.cache_read_tokens or 0
    writes = usage.cache_write_tokens or 0
    uncached = max(total_in - reads - writes, 0)
    cost = (
        uncached * input_mtok
        + reads * read_mtok
        + writes * write_mtok
        + (usage.output_tokens or 0) * output_mtok
    )
    return cost / 1_000_000


def _one_hour_write_extra(usage: Any, calc: Any) -> Decimal:
    """genai-prices 0.0.61 prices every cache write at the 5-minute rate
    (1.25x input); 1-hour writes cost 2x base input: add the difference."""
    one_hour = getattr(usage, "cache_write_1h_tokens", None) or 0
    if not one_hour:
        return Decimal(0)
    from genai_prices.types import calc_mtok_price

    model_price = calc.model_price
    total_in = usage.input_tokens or 0
    at_2x = 2 * calc_mtok_price(model_price.input_mtok, one_hour, total_in)
    already = calc_mtok_price(model_price.cache_write_mtok, one_hour, total_in)
    if model_price.cache_write_mtok is None:
        already = Decimal(0)  # writes were charged as plain input
        at_2x = calc_mtok_price(model_price.input_mtok, one_hour, total_in)
    return at_2x - already


def genai_usage(usage: Any) -> Any:
    """The genai-prices Usage for a CapturedUsage (same token convention)."""
    genai = _load()
    return genai.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        input_audio_tokens=getattr(usage, "input_audio_tokens", None),
        output_audio_tokens=getattr(usage, "output_audio_tokens", None),
        cache_audio_read_tokens=getattr(usage, "cache_audio_read_tokens", None),
    )


_DIALECT_HOME = {"openai": "openai", "anthropic": "anthropic", "gemini": "google", "bedrock": "aws"}


def genai_calc(usage: Any) -> Any:
    """genai-prices' own PriceCalculation, or None for an unknown model.

    Tried in order: the row's provider when genai-prices knows it; the model
    name alone (genai-prices matches "gpt-", "claude", "gemini"...); and for a
    configured gateway host (provider = its host name) the home provider of
    the dialect it speaks (an OpenAI-dialect gateway serving
    text-embedding-3-small is priced at OpenAI's price).
    """
    genai = _load()
    provider = str(getattr(usage, "provider", "") or "")
    attempts: list[dict[str, str]] = []
    if provider in _known_providers:
        attempts.append({"provider_id": provider})
    attempts.append({})
    home = _DIALECT_HOME.get(str(getattr(usage, "dialect", "") or ""))
    if home and provider not in _known_providers:
        attempts.append({"provider_id": home})
    for kwargs in attempts:
        try:
            return genai.calc_price(genai_usage(usage), str(usage.model), **kwargs)
        except LookupError:
            continue
    return None


def price(usage: Any, overrides: Iterable[Any] | None = None) -> tuple[str | None, str]:
    """`(cost_usd decimal string or None when unknown, price_version)`. Never raises."""
    try:
        if not _has_tokens(usage):
            return None, UNPRICED
        entry = _matching_override(usage, overrides)
        if entry is not None:
            cost = _override_cost(usage, entry)
            return (decimal_string(cost) if cost is not None else None), OVERRIDE
        calc = genai_calc(usage)
        if calc is None:
            return None, price_version()
        total = calc.total_price + _one_hour_write_extra(usage, calc)
        return decimal_string(total), price_version()
    except Exception:
        log.warning("pricing failed for model %r; cost left unknown", getattr(usage, "model", "?"))
        log.debug("pricing failure", exc_info=True)
        try:
            return None, price_version()
        except Exception:
            return None, UNPRICED


def flags_after_pricing(usage: Any, cost_usd: str | None, version: str) -> frozenset[str]:
    """The row's flags: the capture flags plus "unknown_model" when there were
    tokens to price but no price was found (never a silent $0)."""
    flags = set(getattr(usage, "flags", ()) or ())
    if cost_usd is None and version != UNPRICED and _has_tokens(usage):
        flags.add("unknown_model")
    return frozenset(flags)
