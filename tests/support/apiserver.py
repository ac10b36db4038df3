"""A small real HTTP/1.1 server on 127.0.0.1 with scripted answers, for client tests.

Threaded (stdlib http.server), keep-alive, optional TLS. Each request takes
the next scripted :class:`Reply` (or asks ``handler`` when the script is
empty) and is recorded in ``requests``. Replies can be delayed (for
timeouts), chunked, dropped without an answer, or raw bytes.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (cut short when the server stops)
    chunked: bool = False
    drop: bool = False  # close the connection without answering
    raw: bytes | None = None  # write exactly these bytes, then close
    close: bool = False  # answer with Connection: close
    hangup: bool = False  # answer as keep-alive, then close anyway (a stale pooled connection)

    def payload(self) -> bytes:
        return json.dumps(self.json).encode() if self.json is not None else self.body


def error(status: int, code: str, detail: str = "", **headers: str) -> Reply:
    return Reply(status, {"error": code, "detail": detail}, headers=headers)


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # id of the TCP connection it came on (keep-alive checks)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Handler = Callable[[SeenRequest], Reply]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-answer are what several tests do on purpose


class ApiServer:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script: deque[Reply] = deque()
        self.handler: Handler | None = None
        self.requests: list[SeenRequest] = []
        self.connections = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer.connections += 1
                    self.connection_id = outer.connections

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = SeenRequest(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    self.connection_id,
                )
                with outer._lock:
                    outer.requests.append(seen)
                    reply = outer.script.popleft() if outer.script else None
                if reply is None:
                    reply = (
                        outer.handler(seen)
                        if outer.handler
                        else error(404, "not_found", "no script")
                    )
                if reply.delay and outer._stopping.wait(reply.delay):
                    self.close_connection = True
                    return
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.raw is not None:
                    self.wfile.write(reply.raw)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                payload = reply.payload()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(payload), 7):
                        piece = payload[start : start + 7]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                self.wfile.flush()
                if reply.hangup:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._server = _QuietServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )

    def add(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def running_server(ssl_context: ssl.SSLContext | None = None) -> Iterator[ApiServer]:
    server = ApiServer(ssl_context).start()
    try:
        yield server
    finally:
        server.stop()
