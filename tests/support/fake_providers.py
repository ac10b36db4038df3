"""Local fake LLM upstreams that speak each provider's real wire format.

One TLS server (a test CA signs its certificate for localhost/127.0.0.1)
answers the OpenAI, Anthropic and Gemini endpoints from the fixtures in
tests/fixtures/capture/: JSON bodies, or SSE written event by event with
chunked transfer encoding and an optional gzip/br/zstd Content-Encoding that
is flushed after every event (as real servers do).

A test can hold a stream after its first event (`hold_after_first`): the
server waits for the test to call `release()` before sending the rest, which
proves the client saw event 1 while upstream still held the others.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .tls import CertAuthority, ServesTLS, Serving, serve_tls

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "capture"


# -- streaming encoders -------------------------------------------------------------

class _Encoder:
    """Compresses a stream piece by piece, flushing so each event can be decoded at once."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        if encoding == "gzip":
            self._z: Any = zlib.compressobj(wbits=31)
        elif encoding == "br":
            import brotli

            self._z = brotli.Compressor()
        elif encoding == "zstd":
            import zstandard

            self._z = zstandard.ZstdCompressor().compressobj()

    def piece(self, data: bytes) -> bytes:
        if self.encoding == "gzip":
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.encoding == "br":
            return bytes(self._z.process(data)) + bytes(self._z.flush())
        if self.encoding == "zstd":
            import zstandard

            return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return data

    def end(self) -> bytes:
        if self.encoding == "gzip":
            return self._z.flush()
        if self.encoding == "br":
            return bytes(self._z.finish())
        if self.encoding == "zstd":
            return self._z.flush()
        return b""


def sse_events(body: bytes) -> list[bytes]:
    """A recorded SSE body split into its events (each with its blank line)."""
    return [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]


def gemini_array_chunks(body: bytes) -> list[bytes]:
    """Gemini's JSON-array stream split where the real server flushes: before each ','."""
    parts = body.split(b"\n,\n")
    return [parts[0]] + [b"\n,\n" + p for p in parts[1:]]


# -- the server ----------------------------------------------------------------

@dataclass
class Seen:
    """One request as upstream received it (for assertions)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    fixture: str
    events_sent: int = 0
    held_until_released: bool = False


# What each provider says about its rate limits on every answer (OpenAI's and Anthropic's real names).
RATE_LIMIT_HEADERS = {
    "openai": [("x-ratelimit-limit-requests", "5000"), ("x-ratelimit-remaining-requests", "4999"),
               ("x-ratelimit-reset-requests", "12ms"), ("x-ratelimit-limit-tokens", "800000"),
               ("x-ratelimit-remaining-tokens", "798877"), ("x-ratelimit-reset-tokens", "84ms")],
    "anthropic": [("anthropic-ratelimit-requests-limit", "4000"), ("anthropic-ratelimit-requests-remaining", "3999"),
                  ("anthropic-ratelimit-requests-reset", "2026-11-29T14:00:01Z"),
                  ("anthropic-ratelimit-input-tokens-limit", "2000000"),
                  ("anthropic-ratelimit-input-tokens-remaining", "1995000"),
                  ("anthropic-ratelimit-input-tokens-reset", "2026-11-29T14:00:01Z")],
}

ERROR_BODIES = {
    "openai": {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                         "code": "rate_limit_exceeded"}},
    "anthropic": {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}},
    "gemini": {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}},
}


@dataclass
class FakeProviders(ServesTLS):
    ca: CertAuthority
    encoding: str = ""  # "", "gzip", "br" or "zstd" (only when the client accepts it)
    hold_after_first: bool = False
    http2: bool = False  # offer h2 by ALPN (then HTTP/2 is served when the client picks it)
    seen: list[Seen] = field(default_factory=list)
    _release: threading.Event = field(default_factory=threading.Event)
    _serving: Serving | None = None

    def hold(self) -> None:
        """Hold every stream after its first event until `release()`."""
        self._release = threading.Event()
        self.hold_after_first = True

    def release(self) -> None:
        self.hold_after_first = False
        self._release.set()

    def start(self) -> FakeProviders:
        owner = self

        class Handler(_Handler):
            providers = owner

        alpn = ["h2", "http/1.1"] if self.http2 else ["http/1.1"]
        self._serving = serve_tls(self.ca, Handler, alpn=alpn, name="fake-providers")
        return self

    def stop(self) -> None:
        self._release.set()
        if self._serving is not None:
            self._serving.stop()

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    pieces: list[bytes]  # the body as written: already content-encoded, one piece per event
    stream: bool


def make_reply(providers: FakeProviders, target: str, headers: dict[str, str], raw: bytes) -> tuple[Reply, Seen]:
    """What the fake answers (the same for HTTP/1.1 and HTTP/2)."""
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    url = urlsplit(target)
    dialect, fixture = route(url.path, body, parse_qs(url.query))
    seen = Seen("POST", url.path, headers, body, fixture)
    providers.seen.append(seen)
    json_type = ("content-type", "application/json")
    leaked = sorted(h for h in headers if h.lower().startswith("x-halton-"))
    if leaked:  # the meter's own headers must never reach a provider
        return Reply(400, [json_type], [json.dumps({"error": {"message": f"leaked upstream: {leaked}"}}).encode()],
                     False), seen
    if fixture == "":
        return Reply(404, [json_type], [b'{"error":{"message":"not found"}}'], False), seen
    model = str(body.get("model", ""))
    if model.startswith("error-") or "error-" in url.path:
        error = json.dumps(ERROR_BODIES[dialect]).encode()
        return Reply(429, [json_type, ("retry-after-ms", "5"), ("retry-after", "0")], [error], False), seen
    wanted = providers.encoding
    encoding = wanted if wanted and wanted in headers.get("accept-encoding", "") else ""
    data = (FIXTURES / fixture).read_bytes()
    if model.startswith("acme-") and fixture.endswith(".json"):  # a model no price list knows
        doc = json.loads(data)
        doc["model"] = model
        data = json.dumps(doc).encode()
    extra = [("content-encoding", encoding)] if encoding else []
    extra += RATE_LIMIT_HEADERS.get(dialect, [])
    encoder = _Encoder(encoding)
    if fixture.endswith(".sse") or fixture == "gemini_stream.json":
        events = sse_events(data) if fixture.endswith(".sse") else gemini_array_chunks(data)
        content_type = "text/event-stream" if fixture.endswith(".sse") else "application/json"
        pieces = [encoder.piece(event) for event in events]
        pieces[-1] += encoder.end()
        return Reply(200, [("content-type", content_type), ("cache-control", "no-cache"), *extra],
                     pieces, True), seen
    return Reply(200, [json_type, *extra], [encoder.piece(data) + encoder.end()], False), seen


def _hold_gate(providers: FakeProviders) -> threading.Event | None:
    """Decided before event 1 leaves: once the client has it, the test may release at once."""
    return providers._release if providers.hold_after_first else None


def _hold_between(gate: threading.Event | None, seen: Seen, index: int) -> None:
    if index == 0 and gate is not None:
        seen.held_until_released = gate.wait(10)


class _Handler(BaseHTTPRequestHandler):
    providers: FakeProviders
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Real API servers send each event at once; without this, Nagle holds
        # a small event back until the previous one is acknowledged.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        if getattr(self.connection, "selected_alpn_protocol", lambda: None)() == "h2":
            _serve_h2(self.providers, self.connection)
        else:
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply, seen = make_reply(self.providers, self.path, headers, raw)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if not reply.stream:
            self.send_header("content-length", str(len(reply.pieces[0])))
            self.end_headers()
            self.wfile.write(reply.pieces[0])
            self.wfile.flush()
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        gate = _hold_gate(self.providers)
        try:
            for index, piece in enumerate(reply.pieces):
                # Counted before the bytes leave: the client may read them before we return.
                seen.events_sent = index + 1
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
                _hold_between(gate, seen, index)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the client hung up (the openai SDK does so after [DONE])


def _serve_h2(providers: FakeProviders, sock: Any) -> None:
    """HTTP/2 (negotiated by ALPN): requests answered one after another."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    requests: dict[int, tuple[dict[str, str], bytearray]] = {}
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    requests[event.stream_id] = ({str(k): str(v) for k, v in event.headers}, bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    requests[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, body = requests.pop(event.stream_id)
                    _answer_h2(providers, conn, sock, event.stream_id, headers, bytes(body))
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            sock.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError):
        return


def _answer_h2(providers: FakeProviders, conn: Any, sock: Any, stream_id: int,
               headers: dict[str, str], body: bytes) -> None:
    reply, seen = make_reply(providers, headers.get(":path", "/"), headers, body)
    conn.send_headers(stream_id, [(":status", str(reply.status)), *reply.headers])
    sock.sendall(conn.data_to_send())
    frame = conn.max_outbound_frame_size
    gate = _hold_gate(providers)
    for index, piece in enumerate(reply.pieces):
        seen.events_sent = index + 1  # counted before the bytes leave (see above)
        for start in range(0, len(piece), frame):
            conn.send_data(stream_id, piece[start : start + frame])
            sock.sendall(conn.data_to_send())
        if reply.stream:
            _hold_between(gate, seen, index)
    conn.end_stream(stream_id)
    sock.sendall(conn.data_to_send())


def route(path: str, body: dict[str, Any], query: dict[str, list[str]]) -> tuple[str, str]:
    """(dialect, fixture file) for a request; fixture "" means 404."""
    stream = body.get("stream") is True
    if path.endswith("/chat/completions"):
        if not stream:
            return "openai", "openai_reasoning_chat.json" if str(body.get("model", "")).startswith("o") \
                else "openai_chat.json"
        options = body.get("stream_options") or {}
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        return "openai", "openai_chat_stream.sse" if with_usage else "openai_chat_stream_no_usage.sse"
    if path.endswith("/responses"):
        return "openai", "openai_responses_stream.sse" if stream else "openai_responses.json"
    if path.endswith("/completions"):
        return "openai", "openai_completions_stream.sse" if stream else "openai_completions.json"
    if path.endswith("/embeddings"):
        return "openai", "openai_embeddings.json"
    if path.endswith("/messages"):
        return "anthropic", "anthropic_messages_stream.sse" if stream else "anthropic_messages.json"
    if path.endswith(":generateContent"):
        return "gemini", "gemini_generate.json"
    if path.endswith(":streamGenerateContent"):
        return "gemini", "gemini_stream.sse" if query.get("alt") == ["sse"] else "gemini_stream.json"
    return "openai", ""
