"""Per-dialect readers: which events and fields carry the model and the usage.

Each reader sees either SSE events (streamed) or one JSON document
(non-streamed, or Gemini's JSON-array stream), and keeps only the model, the
latest usage and whether the stream's terminal event went by. Events are
filtered on raw bytes first, so the JSON of ordinary text deltas is never
parsed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .bounded import BoundedBuffer, first_string_for_key, last_object_for_key
from .sse import SseEvent
from .usage import AnthropicUsage, Tokens, bedrock_tokens, gemini_tokens, openai_tokens

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


def loads(data: bytes) -> Any:
    """JSON or None (a broken event is skipped, never raised)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class DialectReader:
    # Byte strings an SSE event must contain to be worth parsing (None: every
    # event); with last_only, only the last such event of a chunk matters.
    markers: tuple[bytes, ...] | None = None
    last_only = False
    kind = ""  # the endpoint kind, set by the tap

    def __init__(self) -> None:
        self.model: str | None = None
        self.tokens: Tokens | None = None
        self.terminal = False

    def on_event(self, event: SseEvent) -> None:
        raise NotImplementedError

    def on_document(self, doc: Any) -> None:
        raise NotImplementedError

    def on_partial_document(self, buf: BoundedBuffer) -> None:
        raise NotImplementedError

    def finish_stream(self) -> None:
        """End of an SSE body: resolve anything kept raw."""


# Each marker is one C-level scan of every chunk: keep the lists short.
_CHAT_MARKERS = (b'"usage":{', b'"usage": {', b"[DONE]")
_RESPONSES_MARKERS = (b"response.completed", b"response.incomplete", b"response.failed")


class OpenAIReader(DialectReader):
    """Chat Completions, Completions, Embeddings and the Responses API.

    Every event is read until the model is known (the first one names it);
    after that only events carrying a usage object or the end of the stream
    (the Responses API: its terminal events, which carry the usage).
    """

    kind = "chat"

    @property
    def markers(self) -> tuple[bytes, ...] | None:  # type: ignore[override]
        if self.model is None:
            return None
        return _RESPONSES_MARKERS if self.kind == "responses" else _CHAT_MARKERS

    def on_event(self, event: SseEvent) -> None:
        if event.oversized is not None:  # e.g. response.completed echoing a huge output
            self.on_partial_document(event.oversized)
            if event.name in ("response.completed", "response.incomplete", "response.failed"):
                self.terminal = True
            return
        data = event.data
        if data == b"[DONE]":
            self.terminal = True
            return
        wants_model = self.model is None
        has_usage = _USAGE_OBJECT.search(data) is not None
        name = event.name or ""
        terminal = name in ("response.completed", "response.incomplete", "response.failed")
        if not (wants_model or has_usage or terminal or not name and b'"response.' in data[:64]):
            return
        obj = loads(data)
        if not isinstance(obj, dict):
            return
        event_type = obj.get("type")
        if isinstance(event_type, str) and event_type in (
            "response.completed", "response.incomplete", "response.failed"
        ):
            self.terminal = True
        response = obj.get("response")
        source = response if isinstance(response, dict) else obj
        if wants_model or isinstance(response, dict):
            self.model = _str(source.get("model")) or self.model
        if has_usage:
            self._take_usage(source)

    def _take_usage(self, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if not isinstance(usage, dict):  # Groq streams put it under x_groq
            x_groq = obj.get("x_groq")
            usage = x_groq.get("usage") if isinstance(x_groq, dict) else None
        if isinstance(usage, dict):
            self.tokens = openai_tokens(usage)

    def on_document(self, doc: Any) -> None:
        if isinstance(doc, dict):
            self.model = _str(doc.get("model")) or self.model
            self._take_usage(doc)

    def on_partial_document(self, buf: BoundedBuffer) -> None:
        self.model = first_string_for_key(buf.head(), "model") or self.model
        usage = last_object_for_key(buf.tail(), "usage")
        if usage is not None:
            self.tokens = openai_tokens(usage)


class AnthropicReader(DialectReader):
    """/v1/messages: usage in message_start and the final message_delta."""

    markers = (b"message_",)  # message_start, message_delta, message_stop

    def __init__(self) -> None:
        super().__init__()
        self._usage = AnthropicUsage()
        self._seen_usage = False

    def on_event(self, event: SseEvent) -> None:
        name = event.name
        if name == "message_stop":
            self.terminal = True
            return
        if name not in ("message_start", "message_delta"):
            if name is not None or event.oversized is not None:
                return
            head = event.data[:48]  # unnamed events: some gateways drop `event:` lines
            if b"message_stop" in head:
                self.terminal = True
                return
            if b"message_start" not in head and b"message_delta" not in head:
                return
        if event.oversized is not None:
            return  # start/delta events are small; an oversized one is not a usage event
        obj = loads(event.data)
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self.model = _str(message.get("model")) or self.model
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._usage.merge(usage, final_output=False)
                    self._seen_usage = True
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self._usage.merge(usage, final_output=True)
                self._seen_usage = True
        if self._seen_usage:
            self.tokens = self._usage.tokens()

    def on_document(self, doc: Any) -> None:
        if isinstance(doc, dict):
            self.model = _str(doc.get("model")) or self.model
            usage = doc.get("usage")
            if isinstance(usage, dict):
                self._usage.merge(usage, final_output=True)
                self.tokens = self._usage.tokens()

    def on_partial_document(self, buf: BoundedBuffer) -> None:
        self.model = first_string_for_key(buf.head(), "model") or self.model
        usage = last_object_for_key(buf.tail(), "usage")
        if usage is not None:
            self._usage.merge(usage, final_output=True)
            self.tokens = self._usage.tokens()


class GeminiReader(DialectReader):
    """generateContent / streamGenerateContent. usageMetadata is a running
    total repeated on every chunk: only the last one counts. The raw bytes of
    the last chunk that carries it are kept and parsed once, at the end."""

    markers = (b'"usageMetadata"',)  # the final chunk carries it with finishReason
    last_only = True

    def __init__(self) -> None:
        super().__init__()
        self._last_usage_event: bytes | None = None

    def on_event(self, event: SseEvent) -> None:
        if event.oversized is not None:
            self.on_partial_document(event.oversized)
            return
        data = event.data
        if b'"usageMetadata"' in data:
            self._last_usage_event = data
        if b'"finishReason"' in data:
            self.terminal = True

    def finish_stream(self) -> None:
        if self._last_usage_event is not None:
            self.on_document(loads(self._last_usage_event))
            self._last_usage_event = None

    def on_document(self, doc: Any) -> None:
        # A JSON-array stream is a list of chunks: the last with usage wins.
        chunks = doc if isinstance(doc, list) else [doc]
        for chunk in reversed(chunks):
            if isinstance(chunk, dict) and isinstance(chunk.get("usageMetadata"), dict):
                self.tokens = gemini_tokens(chunk["usageMetadata"])
                self.model = self.model or _str(chunk.get("modelVersion"))
                return

    def on_partial_document(self, buf: BoundedBuffer) -> None:
        meta = last_object_for_key(buf.tail(), "usageMetadata")
        if meta is not None:
            self.tokens = gemini_tokens(meta)
        self.model = self.model or first_string_for_key(buf.tail(), "modelVersion")


class BedrockReader(DialectReader):
    """AWS Bedrock runtime: Converse (`usage` in the JSON body), ConverseStream (the
    `metadata` event of the event stream), InvokeModel for Anthropic models (an
    Anthropic Messages body) and InvokeModelWithResponseStream (`chunk` events whose
    base64 `bytes` are Anthropic stream events). The model is the one in the URL."""

    def __init__(self) -> None:
        super().__init__()
        self._anthropic = AnthropicReader()

    def on_event(self, event: SseEvent) -> None:
        if event.oversized is not None:
            return
        if event.name == "metadata":  # ConverseStream's last event
            doc = loads(event.data)
            usage = doc.get("usage") if isinstance(doc, dict) else None
            if isinstance(usage, dict):
                self.tokens = bedrock_tokens(usage)
            self.terminal = True
        elif event.name == "chunk":  # InvokeModelWithResponseStream
            doc = loads(event.data)
            raw = doc.get("bytes") if isinstance(doc, dict) else None
            if not isinstance(raw, str):
                return
            import base64
            import binascii

            try:
                inner = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return
            kind = loads(inner).get("type") if isinstance(loads(inner), dict) else None
            self._anthropic.on_event(SseEvent(kind if isinstance(kind, str) else None, inner))
            self.tokens = self._anthropic.tokens
            self.terminal = self._anthropic.terminal

    def on_document(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            return
        usage = doc.get("usage")
        if not isinstance(usage, dict):
            return
        if "inputTokens" in usage or "outputTokens" in usage:  # Converse
            self.tokens = bedrock_tokens(usage)
        else:  # InvokeModel: the model's own body (Anthropic Messages)
            self._anthropic.on_document(doc)
            self.tokens = self._anthropic.tokens

    def on_partial_document(self, buf: BoundedBuffer) -> None:
        usage = last_object_for_key(buf.tail(), "usage")
        if usage is not None:
            self.on_document({"usage": usage})


READERS: dict[str, type[DialectReader]] = {
    "openai": OpenAIReader,
    "anthropic": AnthropicReader,
    "gemini": GeminiReader,
    "bedrock": BedrockReader,
}
