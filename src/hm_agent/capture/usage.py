"""Provider usage objects -> the api.md token convention.

input_tokens counts every prompt token (cache reads and writes included),
output_tokens includes reasoning; a count the response did not carry is
None, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# The most tokens one call can plausibly report (api.md bounds every count to
# 0..10^12). A larger count is an upstream bug or an attack: the row keeps its
# call with tokens null and the flag "implausible_usage" (never a 2**63 that
# would overflow SQLite or a backend sum).
MAX_TOKENS = 10**12


@dataclass(slots=True)
class Tokens:
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    # Parts of input/output/cache-read that were audio (OpenAI audio chat, Realtime):
    # priced at their own rates, not stored as columns of the row.
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    cache_audio_read_tokens: int | None = None


# What `count` returns for a number no call can report (negative, fractional,
# beyond MAX_TOKENS, or past 2**64 so that JSON parsed it as a float): it is
# itself beyond MAX_TOKENS, so `implausible` flags the row, whatever it is added to.
IMPLAUSIBLE = MAX_TOKENS + 1


def count(value: Any) -> int | None:
    """A token count; None when absent or not a number, IMPLAUSIBLE for an impossible number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else IMPLAUSIBLE
    if isinstance(value, float):
        return int(value) if value.is_integer() and 0 <= value <= MAX_TOKENS else IMPLAUSIBLE
    return None


def _sub(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _plus(a: int | None, b: int | None) -> int | None:
    if a is None and b is None:
        return None
    return (a or 0) + (b or 0)


def openai_tokens(usage: dict[str, Any]) -> Tokens:
    """Chat/Completions/Embeddings (`prompt_tokens`), Responses (`input_tokens`) and
    Realtime (`input_token_details`, with audio) usage."""
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt_details = _sub(usage, "prompt_tokens_details")
        completion_details = _sub(usage, "completion_tokens_details")
        cache_read = count(prompt_details.get("cached_tokens"))
        if cache_read is None:  # DeepSeek's spelling of the same thing
            cache_read = count(usage.get("prompt_cache_hit_tokens"))
        return Tokens(
            input_tokens=count(usage.get("prompt_tokens")),
            output_tokens=count(usage.get("completion_tokens")),
            cache_read_tokens=cache_read,
            reasoning_tokens=count(completion_details.get("reasoning_tokens")),
            input_audio_tokens=count(prompt_details.get("audio_tokens")),
            output_audio_tokens=count(completion_details.get("audio_tokens")),
        )
    input_details = _sub(usage, "input_tokens_details") or _sub(usage, "input_token_details")
    output_details = _sub(usage, "output_tokens_details") or _sub(usage, "output_token_details")
    return Tokens(
        input_tokens=count(usage.get("input_tokens")),
        output_tokens=count(usage.get("output_tokens")),
        cache_read_tokens=count(input_details.get("cached_tokens")),
        reasoning_tokens=count(output_details.get("reasoning_tokens")),
        input_audio_tokens=count(input_details.get("audio_tokens")),
        output_audio_tokens=count(output_details.get("audio_tokens")),
        cache_audio_read_tokens=count(_sub(input_details, "cached_tokens_details").get("audio_tokens")),
    )


class AnthropicUsage:
    """Merges `message_start` and `message_delta` usage.

    message_start's `output_tokens` (1) is a placeholder: output comes only
    from message_delta (cumulative) or a non-streamed body. Later values of the
    input-side counts replace earlier ones (message_delta repeats them as totals).
    """

    __slots__ = ("_fields", "_output", "_eph_1h")

    def __init__(self) -> None:
        self._fields: dict[str, int] = {}
        self._output: int | None = None
        self._eph_1h: int | None = None

    def merge(self, usage: dict[str, Any], *, final_output: bool) -> None:
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            value = count(usage.get(key))
            if value is not None:
                self._fields[key] = value
        if final_output:
            output = count(usage.get("output_tokens"))
            if output is not None:
                self._output = output
        one_hour = count(_sub(usage, "cache_creation").get("ephemeral_1h_input_tokens"))
        if one_hour is not None:
            self._eph_1h = one_hour

    def tokens(self) -> Tokens:
        raw_input = self._fields.get("input_tokens")
        cache_write = self._fields.get("cache_creation_input_tokens")
        cache_read = self._fields.get("cache_read_input_tokens")
        total_input = None if raw_input is None else raw_input + (cache_write or 0) + (cache_read or 0)
        return Tokens(
            input_tokens=total_input,
            output_tokens=self._output,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            cache_write_1h_tokens=self._eph_1h,
        )


def bedrock_tokens(usage: dict[str, Any]) -> Tokens:
    """Bedrock Converse `usage`: inputTokens excludes the cache reads and writes (as Anthropic's)."""
    raw_input = count(usage.get("inputTokens"))
    cache_read = count(usage.get("cacheReadInputTokens"))
    cache_write = count(usage.get("cacheWriteInputTokens"))
    total_input = None if raw_input is None else raw_input + (cache_read or 0) + (cache_write or 0)
    return Tokens(input_tokens=total_input, output_tokens=count(usage.get("outputTokens")),
                  cache_read_tokens=cache_read, cache_write_tokens=cache_write)


def gemini_tokens(meta: dict[str, Any]) -> Tokens:
    """`usageMetadata`. Gemini omits zero counts (proto3), and its
    candidatesTokenCount excludes thinking: output = candidates + thoughts."""
    prompt = count(meta.get("promptTokenCount"))
    tool_prompt = count(meta.get("toolUsePromptTokenCount"))
    candidates = count(meta.get("candidatesTokenCount"))
    thoughts = count(meta.get("thoughtsTokenCount"))
    output = _plus(candidates, thoughts)
    if output is None and count(meta.get("totalTokenCount")) is not None:
        output = 0  # total present, no candidates: an empty answer, omitted as zero
    return Tokens(
        input_tokens=_plus(prompt, tool_prompt),
        output_tokens=output,
        cache_read_tokens=count(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def implausible(tokens: Tokens) -> bool:
    """True if any count of ``tokens`` is beyond MAX_TOKENS (or was IMPLAUSIBLE)."""
    return any(
        isinstance(value, int) and value > MAX_TOKENS
        for value in (getattr(tokens, f.name) for f in fields(tokens))
    )
