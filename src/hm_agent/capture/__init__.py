"""Capture: one proxied LLM call in, usage out (see docs/capture.md).

The addon calls, per flow, on the proxy thread::

    tap = open_call(host, method, path, query, request_headers, request_body, config)
    tap.response_headers(status, headers)
    tap.feed(chunk)            # raw, still content-encoded body bytes
    usage = tap.finish(complete)

and the writer thread prices the result with `pricing.price(usage, overrides)`.
Nothing here raises into the proxy, and nothing keeps a prompt, a completion
or a key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from .dialects import loads
from .hosts import DEFAULT_HOSTS, HostRoute, route_for
from .tap import CallInfo, CallTap, CapturedUsage

__all__ = ["DEFAULT_HOSTS", "CallTap", "CapturedUsage", "HostRoute", "open_call", "route_for"]

log = logging.getLogger("hm_agent.capture")

_OPENAI_ENDINGS = (
    ("/chat/completions", "chat"),
    ("/responses", "responses"),
    ("/completions", "completions"),
    ("/embeddings", "embeddings"),
)
_GEMINI_METHOD = re.compile(r"/models/([^/:]+):(generateContent|streamGenerateContent)$")
_AZURE_DEPLOYMENT = re.compile(r"/deployments/([^/]+)/")
_BEDROCK_METHOD = re.compile(r"/model/(.+)/(converse|converse-stream|invoke|invoke-with-response-stream)$")
_BEDROCK_STREAMS = ("converse-stream", "invoke-with-response-stream")


def _openai_kind(path: str) -> str | None:
    for ending, kind in _OPENAI_ENDINGS:
        if path.endswith(ending):
            return kind
    return None


def _endpoint_dialect(preferred: str, path: str) -> tuple[str, str] | None:
    """(dialect, kind) for a metered endpoint, trying the host's dialect first
    (Gemini and DeepSeek also serve other dialects on the same host)."""
    if preferred == "bedrock":  # a Bedrock host speaks nothing else
        bedrock = _BEDROCK_METHOD.search(path)
        return ("bedrock", bedrock.group(2)) if bedrock else None
    gemini = _GEMINI_METHOD.search(path)
    candidates = {
        "openai": ("openai", _openai_kind(path)),
        "anthropic": ("anthropic", "messages" if path.endswith("/messages") else None),
        "gemini": ("gemini", gemini.group(2) if gemini else None),
    }
    order = [preferred] + [d for d in ("openai", "anthropic", "gemini") if d != preferred]
    for dialect in order:
        found = candidates[dialect]
        if found[1] is not None:
            return found[0], found[1]
    return None


def _call_info(
    route: HostRoute, host: str, path: str, query: str, request_body: bytes
) -> CallInfo | None:
    path = path.split("?", 1)[0]
    clean = path.rstrip("/")
    found = _endpoint_dialect(route.dialect, unquote(clean))
    if found is None:
        return None
    dialect, kind = found
    request = loads(request_body) if request_body and dialect not in ("gemini", "bedrock") else None
    request = request if isinstance(request, dict) else {}
    model = request.get("model")
    model = model if isinstance(model, str) and model else None
    stream = request.get("stream") is True
    if dialect == "gemini":
        match = _GEMINI_METHOD.search(unquote(clean))
        model = match.group(1) if match else None
        stream = kind == "streamGenerateContent"
    elif dialect == "bedrock":
        match = _BEDROCK_METHOD.search(clean)
        model = unquote(match.group(1))[:300] if match else None
        stream = kind in _BEDROCK_STREAMS
    elif model is None:
        deployment = _AZURE_DEPLOYMENT.search(clean)  # Azure: model is in the path
        model = unquote(deployment.group(1)) if deployment else None
    return CallInfo(
        dialect=dialect,
        kind=kind,
        provider=route.provider,
        host=host.lower(),
        endpoint=path,  # never the query: Gemini keys travel in ?key=
        model=model,
        stream=stream,
    )


def open_call(
    host: str,
    method: str,
    path: str,
    query: str,
    request_headers: Mapping[str, str],
    request_body: bytes,
    config: Any = None,
) -> CallTap | None:
    """A tap for an LLM API call, or None for anything else (passed through, not recorded).

    `host` may include ":port" (entries of `config.capture_hosts` may too).
    Never raises: a request it cannot read is not metered.
    """
    try:
        if method.upper() != "POST":
            return None
        route = route_for(host, config)
        if route is None:
            return None
        info = _call_info(route, host, path, query, request_body or b"")
        return CallTap(info) if info is not None else None
    except Exception:
        log.debug("capture: request not understood; not metered", exc_info=True)
        return None
