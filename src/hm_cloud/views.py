"""Presentation helpers for the pages: money, relative times, the SVG chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from .store import NANOS


def money(nanos: int) -> str:
    value = Decimal(nanos) / NANOS
    if value == 0:
        return "$0.00"
    if abs(value) < Decimal("0.0001"):
        return "<$0.0001"  # a known, tiny cost: never shown as if it were $0
    if abs(value) < Decimal("0.01"):
        return f"${value:.4f}"
    return f"${value:,.2f}"


def cost_cell(group: dict[str, Any]) -> str:
    """Known cost, and how many rows had no price: never shown as $0."""
    if group["rows"] and group["unknown"] == group["rows"]:
        return "unknown price"
    text = money(group["nanos"])
    if group["unknown"]:
        text += f" + {group['unknown']} at unknown price"
    return text


def timestamp(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def relative_time(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    ago = max(0, int(now - then))
    if ago < 60:
        return f"{ago}s ago"
    if ago < 3600:
        return f"{ago // 60} min ago"
    if ago < 86400:
        return f"{ago // 3600} h ago"
    days = ago // 86400
    return f"{days} day ago" if days == 1 else f"{days} days ago"


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: str
    label: str


CHART_WIDTH = 600
CHART_HEIGHT = 180


def day_range(from_date: str, to_date: str) -> list[str]:
    start, end = date.fromisoformat(from_date), date.fromisoformat(to_date)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def cost_bars(per_day: list[dict[str, Any]], from_date: str, to_date: str) -> list[Bar]:
    """One bar per day of the range (days without rows are empty bars)."""
    by_day = {g["key"]: g for g in per_day}
    days = day_range(from_date, to_date)
    peak = max((g["nanos"] for g in per_day), default=0) or 1
    slot = CHART_WIDTH / max(1, len(days))
    bars = []
    for i, day in enumerate(days):
        group = by_day.get(day, {"rows": 0, "nanos": 0, "unknown": 0})
        height = (CHART_HEIGHT - 10) * group["nanos"] / peak
        label = f"{day}: {cost_cell(group)} ({group['rows']} calls)"
        bars.append(
            Bar(
                x=round(i * slot + slot * 0.1, 2),
                y=round(CHART_HEIGHT - height, 2),
                width=round(max(slot * 0.8, 0.5), 2),
                height=round(height, 2),
                day=day,
                label=label,
            )
        )
    return bars
