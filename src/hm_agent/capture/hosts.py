"""Which hosts are LLM APIs, which wire dialect they speak, and who bills them.

The provider name is the genai-prices provider id where one exists, so the
writer thread can price a row without a second lookup table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DIALECTS = ("openai", "anthropic", "gemini", "bedrock")
# AWS Bedrock runtime endpoints of every region (and their FIPS twins).
_BEDROCK = re.compile(r"^bedrock-runtime(?:-fips)?\.[a-z0-9-]{1,40}\.amazonaws\.com$")


@dataclass(frozen=True, slots=True)
class HostRoute:
    dialect: str
    provider: str


# Exact hosts. Lower-case; a "host:port" key matches only that port.
DEFAULT_HOSTS: dict[str, HostRoute] = {
    "api.openai.com": HostRoute("openai", "openai"),
    "api.anthropic.com": HostRoute("anthropic", "anthropic"),
    "generativelanguage.googleapis.com": HostRoute("gemini", "google"),
    "aiplatform.googleapis.com": HostRoute("gemini", "google"),
    "openrouter.ai": HostRoute("openai", "openrouter"),
    "api.openrouter.ai": HostRoute("openai", "openrouter"),
    "api.groq.com": HostRoute("openai", "groq"),
    "api.together.xyz": HostRoute("openai", "together"),
    "api.together.ai": HostRoute("openai", "together"),
    "api.mistral.ai": HostRoute("openai", "mistral"),
    "api.deepseek.com": HostRoute("openai", "deepseek"),
    "api.x.ai": HostRoute("openai", "x-ai"),
    "api.fireworks.ai": HostRoute("openai", "fireworks"),
    "api.perplexity.ai": HostRoute("openai", "perplexity"),
    "api.cerebras.ai": HostRoute("openai", "cerebras"),
    "api.novita.ai": HostRoute("openai", "novita"),
    "api.moonshot.ai": HostRoute("openai", "moonshotai"),
    "api.moonshot.cn": HostRoute("openai", "moonshotai"),
    "api.avian.io": HostRoute("openai", "avian"),
}

# Host suffixes (a leading dot): tenant sub-domains such as Azure resources.
DEFAULT_SUFFIXES: dict[str, HostRoute] = {
    ".openai.azure.com": HostRoute("openai", "azure"),
    ".cognitiveservices.azure.com": HostRoute("openai", "azure"),
    "-aiplatform.googleapis.com": HostRoute("gemini", "google"),
}


def _config_entries(config: Any) -> Iterable[tuple[str, HostRoute]]:
    """`config.capture_hosts`: (host, dialect) or (host, dialect, provider) or dicts.

    A configured host without a provider is billed under its own host name;
    pricing then matches the model against every provider genai-prices knows.
    """
    for entry in getattr(config, "capture_hosts", None) or ():
        if isinstance(entry, dict):
            host, dialect, provider = entry.get("host"), entry.get("dialect"), entry.get("provider")
        else:
            items = tuple(entry)
            host = items[0] if items else None
            dialect = items[1] if len(items) > 1 else None
            provider = items[2] if len(items) > 2 else None
        if not isinstance(host, str) or dialect not in DIALECTS:
            continue
        host = host.strip().lower()
        yield host, HostRoute(str(dialect), str(provider or host))


def route_for(host: str, config: Any = None) -> HostRoute | None:
    """The route for `host` (which may carry a ":port"), or None: not an LLM API."""
    host = host.strip().lower()
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        configured = dict(_config_entries(config))
    except Exception:  # a malformed config must never break a flow
        configured = {}
    for key in (host, bare):
        if key in configured:
            return configured[key]
    for key in (host, bare):
        if key in DEFAULT_HOSTS:
            return DEFAULT_HOSTS[key]
    for suffix, route in DEFAULT_SUFFIXES.items():
        if bare.endswith(suffix):
            return route
    if _BEDROCK.match(bare):
        return HostRoute("bedrock", "aws")
    return None
