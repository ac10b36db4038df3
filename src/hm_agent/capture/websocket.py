"""WebSocket LLM sessions: one CapturedUsage per response, not per connection.

Two OpenAI transports speak WebSocket:
- the Responses API (`wss://api.openai.com/v1/responses`, Codex CLI's default):
  the client sends `response.create`, the server streams the same events as
  the SSE form and ends each response with `response.completed` (or
  `.incomplete` / `.failed`), whose `response.usage` is the usage;
- the Realtime API (`wss://api.openai.com/v1/realtime?model=…`): each response
  ends with `response.done`, whose `response.usage` carries text and audio
  token details. The model is named in the URL and in `session.created`.

The addon hands every whole message over as it passes (mitmproxy relays it
right after the hook); text messages are filtered on raw bytes first, so a
delta event is never parsed. A response still open when the socket closes
becomes a row flagged `incomplete`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from .bounded import first_string_for_key, last_object_for_key
from .dialects import loads
from .hosts import route_for
from .tap import CapturedUsage
from .usage import Tokens, implausible, openai_tokens

log = logging.getLogger("hm_agent.capture")

MAX_PARSE = 32 * 1024 * 1024  # a bigger message is read from its head and tail only
MAX_OPEN = 64  # responses in flight on one socket (a real client has one); past it the oldest is cut
MAX_ID = 200  # characters of a response id kept
_TERMINAL = {
    "responses": (b"response.completed", b"response.incomplete", b"response.failed"),
    "realtime": (b"response.done",),
}


def _parse(content: bytes) -> dict[str, Any]:
    doc = loads(content) if len(content) <= MAX_PARSE else None
    return doc if isinstance(doc, dict) else {}


def _response_id(doc: dict[str, Any]) -> str:
    response = doc.get("response")
    rid = response.get("id") if isinstance(response, dict) else None
    return rid[:MAX_ID] if isinstance(rid, str) else ""


class WsResponse:
    """One response in flight: when it started and when its first event came."""

    __slots__ = ("started", "first_event")

    def __init__(self, started: float, first_event: float | None) -> None:
        self.started = started
        self.first_event = first_event


class WsSession:
    """One WebSocket to an LLM API. Never raises: a message it cannot read is skipped."""

    def __init__(self, kind: str, provider: str, host: str, endpoint: str, model: str | None) -> None:
        self.kind = kind  # "responses" or "realtime"
        self.provider = provider
        self.host = host
        self.endpoint = endpoint
        self.model = model
        self.open: dict[str, WsResponse] = {}  # by response id, oldest first
        self._requested: float | None = None  # a response.create not yet answered
        self._terminal = _TERMINAL[kind]

    # -- the seam -------------------------------------------------------
    def client_message(self, content: bytes, now: float) -> None:
        """A client → server message: `response.create` starts the clock of the next response."""
        try:
            if b'"response.create"' in content[:4096]:
                self._requested = now
                if self.kind == "responses" and self.model is None:
                    self.model = first_string_for_key(content[:65536], "model") or self.model
        except Exception:
            log.debug("capture: websocket client message not understood", exc_info=True)

    def server_message(self, content: bytes, now: float) -> list[tuple[CapturedUsage, WsResponse]]:
        """A server → client text message; returns the finished responses (usually none)."""
        try:
            return self._server_message(content, now)
        except Exception:
            log.debug("capture: websocket server message not understood", exc_info=True)
            return []

    def close(self) -> list[tuple[CapturedUsage, WsResponse]]:
        """The socket closed: responses still open were cut short."""
        cut = list(self.open.values())
        if self._requested is not None:  # asked for, never answered
            cut.append(WsResponse(self._requested, None))
        self.open, self._requested = {}, None
        return [(self._usage(Tokens(), frozenset({"incomplete"})), r) for r in cut]

    # -- internals --------------------------------------------------------
    def _server_message(self, content: bytes, now: float) -> list[tuple[CapturedUsage, WsResponse]]:
        head = content[:512]  # "type" comes first (after Realtime's event_id)
        if b'"response.created"' in head:
            rid = _response_id(_parse(content))
            cut = []
            if rid not in self.open and len(self.open) >= MAX_OPEN:  # an upstream that never finishes any
                cut.append(self.open.pop(next(iter(self.open))))
            self.open[rid] = WsResponse(self._requested if self._requested is not None else now, now)
            self._requested = None
            return [(self._usage(Tokens(), frozenset({"incomplete"})), r) for r in cut]
        if b'"session.created"' in head or b'"session.updated"' in head:
            session = _parse(content).get("session")
            model = session.get("model") if isinstance(session, dict) else None
            if isinstance(model, str) and model:
                self.model = model[:200]
            return []
        if not any(m in head for m in self._terminal):
            return []
        return self._terminal_event(content, now)

    def _terminal_event(self, content: bytes, now: float) -> list[tuple[CapturedUsage, WsResponse]]:
        if len(content) > MAX_PARSE:
            usage: Any = last_object_for_key(content[-65536:], "usage")
            model: Any = first_string_for_key(content[:65536], "model")
            rid = (first_string_for_key(content[:65536], "id") or "")[:MAX_ID]
        else:
            doc = _parse(content)
            if str(doc.get("type", "")).encode() not in self._terminal:
                return []
            response = doc.get("response")
            response = response if isinstance(response, dict) else {}
            usage, model, rid = response.get("usage"), response.get("model"), _response_id(doc)
        current = self.open.pop(rid, None)
        if current is None and self.open:
            current = self.open.pop(next(iter(self.open)))  # the oldest open one
        if current is None:
            current = WsResponse(self._requested if self._requested is not None else now, now)
            self._requested = None
        if isinstance(model, str) and model:
            self.model = model[:200]
        flags: frozenset[str] = frozenset()
        tokens = openai_tokens(usage) if isinstance(usage, dict) else Tokens()
        if implausible(tokens):  # the same rule as HTTP responses (capture/usage.py)
            log.warning("%s reported an implausible token count; tokens recorded as unknown", self.host)
            tokens, flags = Tokens(), frozenset({"implausible_usage"})
        elif tokens.input_tokens is None and tokens.output_tokens is None:
            flags = frozenset({"usage_missing"})
        return [(self._usage(tokens, flags), current)]

    def _usage(self, tokens: Tokens, flags: frozenset[str]) -> CapturedUsage:
        return CapturedUsage(
            provider=self.provider,
            model=self.model or "unknown",
            host=self.host,
            endpoint=self.endpoint,
            status=200,  # a response over an accepted (101) WebSocket
            stream=True,
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            cache_read_tokens=tokens.cache_read_tokens,
            reasoning_tokens=tokens.reasoning_tokens,
            flags=flags,
            dialect="openai",
            input_audio_tokens=tokens.input_audio_tokens,
            output_audio_tokens=tokens.output_audio_tokens,
            cache_audio_read_tokens=tokens.cache_audio_read_tokens,
        )


def open_websocket(host: str, path: str, query: str, headers: Mapping[str, str],
                   config: Any = None) -> WsSession | None:
    """A session for a WebSocket to an LLM API's Responses or Realtime endpoint, else None."""
    try:
        route = route_for(host, config)
        if route is None or route.dialect != "openai":
            return None
        clean = unquote(path.split("?", 1)[0]).rstrip("/")
        if clean.endswith("/responses"):
            kind = "responses"
        elif clean.endswith("/realtime"):
            kind = "realtime"
        else:
            return None
        models = parse_qs(query).get("model") or parse_qs(query).get("deployment") or []
        model = models[0][:200] if models and models[0] else None
        return WsSession(kind, route.provider, host.lower(), path.split("?", 1)[0], model)
    except Exception:
        log.debug("capture: websocket request not understood; not metered", exc_info=True)
        return None
