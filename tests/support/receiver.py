"""A local HTTP receiver that records every POST (webhooks, OTLP/HTTP), for tests.

    with Receiver() as hooks:
        url = hooks.url("/slack")
        ...
        posts = hooks.wait_for(3)     # the first 3 POSTs (path, headers, body bytes)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class Receiver:
    status: int = 200
    posts: list[Post] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str = "/") -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = min(int(self.headers.get("content-length") or 0), 10 << 20)
                body = self.rfile.read(length)
                with owner._cond:
                    owner.posts.append(Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    owner._cond.notify_all()
                self.send_response(owner.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_GET(self) -> None:  # plain non-LLM traffic
                self.send_response(200)
                self.send_header("content-length", "5")
                self.end_headers()
                self.wfile.write(b"hello")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="receiver", daemon=True)
        self._thread.start()
        return self

    def wait_for(self, n: int, timeout: float = 15.0, path: str | None = None) -> list[Post]:
        """Wait until at least n POSTs (to ``path`` if given) arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [p for p in self.posts if path is None or p.path == path]
                left = deadline - time.monotonic()
                if len(found) >= n or left <= 0:
                    return found
                self._cond.wait(left)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def not_http(answer: bytes = b"SSH-2.0-OpenSSH_9.0\r\n\r\n") -> Iterator[str]:
    """The URL of a listener that answers one request with ``answer`` (not HTTP: an SSH banner)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    threading.Thread(target=garbage, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        listener.close()


@contextmanager
def serving_page(page: bytes) -> Iterator[int]:
    """The port of a local server that answers every GET with the HTML ``page`` (an
    attacker's page in the browser tests)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
