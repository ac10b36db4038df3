"""Rate-limit headers of an LLM response, normalised.

OpenAI-style: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens,…}``;
Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``;
plus ``retry-after``. Returned as ``{kind: {"limit"|"remaining"|"reset": value}}``
with bounded names and values (headers are hostile input).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
_FIELDS = ("limit", "remaining", "reset")
_SAFE = re.compile(r"^[A-Za-z0-9 .:_+\-/TZ]{1,64}$")
MAX_KINDS = 8


def ratelimits(headers: Mapping[str, str]) -> dict[str, dict[str, str]] | None:
    """The rate-limit state a response announced, or None when it announced none."""
    found: dict[str, dict[str, str]] = {}
    for name, value in headers.items():
        name = name.lower()
        prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
        if prefix is None or not _SAFE.match(value.strip()):
            continue
        rest = name[len(prefix):]
        kind = field = None
        for candidate in _FIELDS:
            if rest.startswith(candidate + "-"):
                field, kind = candidate, rest[len(candidate) + 1:]
            elif rest.endswith("-" + candidate):
                field, kind = candidate, rest[: -len(candidate) - 1]
        if not kind or not field or len(kind) > 40 or not re.fullmatch(r"[a-z0-9_\-]+", kind):
            continue
        if kind not in found and len(found) >= MAX_KINDS:
            continue
        found.setdefault(kind, {})[field] = value.strip()
    retry = headers.get("retry-after", "").strip()
    if found and retry and _SAFE.match(retry):
        found.setdefault("retry-after", {})["reset"] = retry
    return found or None
