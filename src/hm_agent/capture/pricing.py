"""Pricing (stub; the capture work replaces it with genai-prices)."""

from __future__ import annotations

from typing import Any


def price(usage: Any, overrides: Any = None) -> tuple[str | None, str]:
    """Return ``(cost_usd or None when unknown, price_version)``."""
    return None, "unpriced"
