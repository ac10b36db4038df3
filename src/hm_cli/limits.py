"""Rate limits: the latest rate-limit headers per host and model (status, report --limits)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

KIND_ORDER = ("requests", "tokens", "input-tokens", "output-tokens")


def read_limits(db: Path, limit: int = 200) -> list[dict[str, Any]]:
    """[{host, model, at, limits: {kind: {limit, remaining, reset}}}], most recent first; [] when none."""
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT host, model, at, limits FROM ratelimits ORDER BY at DESC LIMIT ?",
                                 (limit,)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:  # no table yet (an older daemon), or a damaged file: status answers anyway
        return []
    out = []
    for host, model, at, raw in found:
        try:
            limits = json.loads(raw)
        except ValueError:
            continue
        if isinstance(limits, dict):
            out.append({"host": host, "model": model, "at": at, "limits": limits})
    return out


def describe(entry: dict[str, Any]) -> str:
    """`requests 4,999/5,000 (reset 12ms), tokens 29,000/30,000 (reset 2s)`."""
    limits = entry["limits"]
    parts = []
    for kind in sorted(limits, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 99, k)):
        values = limits[kind]
        if not isinstance(values, dict):
            continue
        if kind == "retry-after":
            parts.append(f"retry after {values.get('reset')}s")
            continue
        remaining, limit, reset = values.get("remaining"), values.get("limit"), values.get("reset")
        text = f"{kind} {remaining if remaining is not None else '?'}/{limit if limit is not None else '?'}"
        if reset:
            text += f" (reset {reset})"
        parts.append(text)
    return ", ".join(parts)
