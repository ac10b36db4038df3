"""A local fake AWS Bedrock runtime (TLS) answering Converse, ConverseStream,
InvokeModel and InvokeModelWithResponseStream with their real shapes: JSON
bodies, and `application/vnd.amazon.eventstream` messages written one per chunk.
Signatures (SigV4) are not checked; the request is recorded for assertions."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from hm_agent.capture.eventstream import encode_message

from .tls import CertAuthority, ServesTLS, Serving, serve_tls

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "capture"

CONVERSE = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Hello! How can I help?"}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 125, "outputTokens": 60, "totalTokens": 2233,
              "cacheReadInputTokens": 1024, "cacheWriteInputTokens": 1024},
    "metrics": {"latencyMs": 812},
}
CONVERSE_STREAM = [
    ("messageStart", {"role": "assistant"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "! How can I help?"}}),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("messageStop", {"stopReason": "end_turn"}),
    ("metadata", {"usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42}, "metrics": {"latencyMs": 300}}),
]
# (input, output, cache read, cache write) as the row must record them
EXPECTED = {
    "converse": (2173, 60, 1024, 1024),
    "converse-stream": (30, 12, None, None),
    "invoke": (5943, 503, 1800, 2048),
    "invoke-with-response-stream": (4525, 15, None, None),
}


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return encode_message({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                          json.dumps(payload).encode())


def _anthropic_stream_chunks() -> list[bytes]:
    events = [line[len("data: "):] for line in (FIXTURES / "anthropic_messages_stream.sse").read_text().splitlines()
              if line.startswith("data: ")]
    return [_event("chunk", {"bytes": base64.b64encode(e.encode()).decode()}) for e in events]


class FakeBedrock(ServesTLS):
    def __init__(self, ca: CertAuthority) -> None:
        self.ca = ca
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._serving: Serving | None = None

    def __enter__(self) -> FakeBedrock:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                action = self.path.rsplit("/", 1)[-1]
                if action == "converse":
                    self._json(CONVERSE)
                elif action == "invoke":
                    self._json(json.loads((FIXTURES / "anthropic_messages.json").read_text()))
                elif action == "converse-stream":
                    self._stream([_event(k, p) for k, p in CONVERSE_STREAM])
                elif action == "invoke-with-response-stream":
                    self._stream(_anthropic_stream_chunks())
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def _json(self, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, messages: list[bytes]) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/vnd.amazon.eventstream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for message in messages:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(message), message))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self._serving = serve_tls(self.ca, Handler, name="fake-bedrock")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._serving is not None:
            self._serving.stop()
