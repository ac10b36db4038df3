"""Exact usage for streamed OpenAI-style calls that did not ask for it.

OpenAI (and compatible servers) put `usage` in a streamed `/chat/completions`
or `/completions` response only when the request says
`stream_options.include_usage`. With `[capture] inject_stream_usage = true`
(the default) the proxy adds that option to such a request and then gives the
client exactly the stream it asked for:

- the extra usage-only chunk (`"choices":[]` with a `usage` object) is removed;
- the `"usage":null` member that include_usage adds to every other chunk is
  removed from each chunk;

while the tap reads the untouched upstream bytes, so the row is exact. The
request also asks for an uncompressed answer (`Accept-Encoding: identity`),
so chunks can be edited as they pass. Only whole SSE events are handed on;
a partial event waits only for the rest of itself.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .tap import CallInfo

# Providers whose streamed chat endpoints accept stream_options (configured
# OpenAI-dialect gateways — vLLM, LiteLLM, Ollama, LM Studio — do too).
INJECTABLE_PROVIDERS = frozenset({
    "openai", "azure", "openrouter", "groq", "together", "deepseek", "x-ai", "fireworks", "cerebras",
})
MAX_REQUEST = 8 * 1024 * 1024

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_USAGE_ONLY = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def wants_injection(info: CallInfo, configured_hosts: Any) -> bool:
    """A streamed OpenAI chat/completions call to a provider that accepts stream_options."""
    if info.dialect != "openai" or info.kind not in ("chat", "completions") or not info.stream:
        return False
    if info.provider in INJECTABLE_PROVIDERS:
        return True
    return any(str(entry[0]).lower() == info.provider for entry in configured_hosts or ())


def inject_include_usage(body: bytes) -> bytes | None:
    """The request body with stream_options.include_usage = true, or None to leave it alone
    (not a JSON object, already asking, or too big)."""
    if not body or len(body) > MAX_REQUEST:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("stream") is not True:
        return None
    options = doc.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict) or "include_usage" in options:
        return None  # the client said what it wants (true or false): respect it
    doc["stream_options"] = {**options, "include_usage": True}
    return orjson.dumps(doc)


class UsageChunkStripper:
    """mitmproxy `response.stream` callable: SSE bytes in, the same minus what injection added."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of the body: whatever is left (a last event without its blank line)
            rest, self._pending = self._pending, b""
            return self._strip(rest) if rest else b""
        data = self._pending + chunk if self._pending else chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\n\r\n"))
        if cut < 0:
            self._pending = data
            return b""
        cut = data.index(b"\n", cut + 1) + 1  # just past the blank line
        self._pending = data[cut:]
        return self._strip(data[:cut])

    @staticmethod
    def _strip(events: bytes) -> bytes:
        if b'"usage"' not in events:
            return events
        out = []
        start = 0
        for end in _EVENT_END.finditer(events):
            out.append(UsageChunkStripper._one(events[start:end.end()]))
            start = end.end()
        if start < len(events):
            out.append(UsageChunkStripper._one(events[start:]))
        return b"".join(out)

    @staticmethod
    def _one(event: bytes) -> bytes:
        if b'"usage"' not in event:
            return event
        if _USAGE_ONLY.search(event) and not _USAGE_NULL.search(event):
            return b""  # the usage-only chunk the client did not ask for
        return _USAGE_NULL.sub(b"", event)
