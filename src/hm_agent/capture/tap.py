"""CallTap: watches one proxied LLM call's response bytes as they pass.

Cheap per chunk, bounded memory, and it never raises: whatever goes wrong
inside becomes a flag on the row ("unparsed"), never a broken flow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from .bounded import BoundedBuffer
from .decoding import ChunkDecoder, DecodeError, decoder_for
from .dialects import READERS, DialectReader, loads
from .eventstream import EventStreamSplitter
from .ratelimits import ratelimits
from .sse import SseEvent, SseSplitter
from .usage import Tokens, implausible

log = logging.getLogger("hm_agent.capture")

# Bytes a body can start with when it is already decoded text (JSON or SSE).
_TEXT_STARTS = (b"{", b"[", b"data:", b"event:", b":", b" ", b"\n", b"\r", b"\t", b"id:")


@dataclass(frozen=True, slots=True)
class CapturedUsage:
    """What one upstream response said about its usage (prices come later).

    `cache_write_1h_tokens` is the part of `cache_write_tokens` written with a
    1-hour TTL (Anthropic); pricing charges it at 2x base input. `dialect`
    is the wire format that was read ("openai", "anthropic", "gemini"); pricing
    falls back to that dialect's home provider for a configured gateway host.
    """

    provider: str
    model: str
    host: str
    endpoint: str
    status: int
    stream: bool
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    dialect: str = ""
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    cache_audio_read_tokens: int | None = None
    # The response's rate-limit headers as compact JSON (capture/ratelimits.py), for
    # `status` and `report --limits`; None when it sent none.
    ratelimits: str | None = None


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What open_call learnt from the request (no prompt, no key)."""

    dialect: str
    kind: str  # chat, responses, completions, embeddings, messages, generateContent, ...
    provider: str
    host: str
    endpoint: str
    model: str | None
    stream: bool


class CallTap:
    __slots__ = (
        "info", "status", "_reader", "_decoder", "_sse", "_body", "_mode",
        "_unparsed", "_finished", "_result", "_bytes_in", "_decoded_any", "_needs_terminal",
        "_ratelimits", "_events",
    )

    def __init__(self, info: CallInfo) -> None:
        self.info = info
        self.status = 0
        self._reader: DialectReader = READERS[info.dialect]()
        self._reader.kind = info.kind
        if info.dialect in ("gemini", "bedrock"):
            self._reader.model = info.model
        # Streams that always end with a terminal event (message_stop,
        # response.completed): one that ends without it was cut short upstream.
        self._needs_terminal = info.kind in ("messages", "responses", "converse-stream",
                                             "invoke-with-response-stream")
        self._decoder: ChunkDecoder | None = None
        self._sse: SseSplitter | None = None
        self._body: BoundedBuffer | None = None
        self._mode = "ignore"  # until response_headers: "sse", "json" or "ignore"
        self._unparsed = False
        self._finished = False
        self._result: CapturedUsage | None = None
        self._bytes_in = 0
        self._decoded_any = False
        self._ratelimits: str | None = None
        self._events: EventStreamSplitter | None = None

    # -- the seam -------------------------------------------------------
    def response_headers(self, status: int, headers: Mapping[str, str]) -> None:
        try:
            self._response_headers(status, headers)
        except Exception:
            log.debug("capture: response headers not understood", exc_info=True)
            self._unparsed = True
            self._mode = "ignore"

    def feed(self, chunk: bytes) -> None:
        if self._mode == "ignore" or not chunk or self._finished:
            return
        try:
            self._feed(chunk)
        except Exception:
            log.debug("capture: body not understood", exc_info=True)
            self._unparsed = True
            self._mode = "ignore"

    def finish(self, complete: bool = True) -> CapturedUsage:
        if self._result is not None:
            return self._result
        self._finished = True
        try:
            self._result = self._finish(complete)
        except Exception:
            log.debug("capture: finishing failed", exc_info=True)
            self._result = self._usage(None, frozenset({"unparsed"}))
        return self._result

    # -- internals --------------------------------------------------------
    def _response_headers(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = int(status)
        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
        limits = ratelimits(lowered)
        self._ratelimits = json.dumps(limits, separators=(",", ":"), sort_keys=True) if limits else None
        if not 200 <= self.status < 300:
            self._mode = "ignore"  # errors: a row with the status, no tokens
            return
        content_type = lowered.get("content-type", "").lower()
        self._decoder = decoder_for(lowered.get("content-encoding"))
        if "text/event-stream" in content_type:
            self._mode = "sse"
            self._sse = SseSplitter()
        elif "application/vnd.amazon.eventstream" in content_type:
            self._mode = "eventstream"
            self._events = EventStreamSplitter()
        else:
            self._mode = "json"
            self._body = BoundedBuffer()

    def _feed(self, chunk: bytes) -> None:
        self._bytes_in += len(chunk)
        assert self._decoder is not None
        try:
            text = self._decoder.decode(chunk)
        except DecodeError:
            # The addon may hand over an already-decoded body: accept plain text once.
            if self._decoded_any or not chunk.lstrip()[:1] or not chunk.startswith(_TEXT_STARTS):
                raise
            self._decoder = decoder_for(None)
            text = chunk
        if not text:
            return
        self._decoded_any = True
        if self._mode == "sse":
            assert self._sse is not None
            reader = self._reader
            for event in self._sse.feed(text, reader.markers, reader.last_only):
                self._reader.on_event(event)
        elif self._mode == "eventstream":
            assert self._events is not None
            for name, payload in self._events.feed(text):
                self._reader.on_event(SseEvent(name, payload))
        else:
            assert self._body is not None
            self._body.append(text)

    def _finish(self, complete: bool) -> CapturedUsage:
        flags: set[str] = set()
        if self._mode == "eventstream" or (self._mode == "sse" and self._sse is not None):
            for event in self._sse.close() if self._sse is not None else ():
                self._reader.on_event(event)
            self._reader.finish_stream()
            if self._reader.terminal:
                complete = True  # the SDK hung up after [DONE]: that is a whole call
            elif self._needs_terminal:
                complete = False  # e.g. Anthropic's mid-stream overloaded_error
        elif self._mode == "json" and self._body is not None and self._body.total:
            whole = self._body.whole()
            doc = loads(whole) if whole is not None else None
            if doc is not None:
                self._reader.on_document(doc)
                complete = True
            elif whole is None:
                self._reader.on_partial_document(self._body)
                if self._reader.tokens is None:
                    self._unparsed = True
            elif complete:
                self._unparsed = True  # a whole body that is not JSON
            else:
                self._reader.on_partial_document(self._body)
        elif self._mode == "json" and 200 <= self.status < 300 and complete:
            self._unparsed = True  # a 2xx with an empty body
        tokens = self._reader.tokens
        if tokens is not None and implausible(tokens):
            log.warning("%s reported an implausible token count; tokens recorded as unknown", self.info.host)
            tokens = None
            flags.add("implausible_usage")
        if not complete:
            flags.add("incomplete")
        if self._unparsed:
            flags.add("unparsed")
        elif tokens is None and complete and 200 <= self.status < 300 and "implausible_usage" not in flags:
            flags.add("usage_missing")
        return self._usage(tokens, frozenset(flags))

    def _usage(self, tokens: Tokens | None, flags: frozenset[str]) -> CapturedUsage:
        info = self.info
        reader_model = self._reader.model
        if info.dialect in ("gemini", "bedrock"):
            model = info.model or reader_model
        else:  # the response names the exact snapshot that was billed
            model = reader_model or info.model
        tokens = tokens or Tokens()
        return CapturedUsage(
            provider=info.provider,
            model=model or "unknown",
            host=info.host,
            endpoint=info.endpoint,
            status=self.status,
            stream=info.stream or self._mode in ("sse", "eventstream"),
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            cache_read_tokens=tokens.cache_read_tokens,
            cache_write_tokens=tokens.cache_write_tokens,
            cache_write_1h_tokens=tokens.cache_write_1h_tokens,
            reasoning_tokens=tokens.reasoning_tokens,
            flags=flags,
            dialect=info.dialect,
            input_audio_tokens=tokens.input_audio_tokens,
            output_audio_tokens=tokens.output_audio_tokens,
            cache_audio_read_tokens=tokens.cache_audio_read_tokens,
            ratelimits=self._ratelimits,
        )
