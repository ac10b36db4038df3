"""A scriptable reverse proxy between a daemon and the backend, for fault tests.

    with running_cloud(tmp) as cloud, FaultProxy(cloud.base_url) as proxy:
        pair_daemon(d, cloud, ..., base_url=proxy.base_url)
        proxy.fail_next(2, 503)                    # next 2 batches: 503 + Retry-After: 1
        proxy.fail_next(1, 429, headers={"Retry-After": "2"})
        proxy.delay_next(1, 5.0)                   # forward, answer 5 s late (client times out)
        proxy.hold(0.3)                            # every batch answer 0.3 s late, until hold(0)
        proxy.down(); ...; proxy.up()              # refuse connections, drop open ones (RST)
        proxy.count(status=200), proxy.batch_totals(), proxy.seen()

Threaded, on 127.0.0.1 with a port the kernel picks (kept across down/up).
Requests are forwarded with httpx, body bytes untouched (``Content-Encoding``
passes through). Faults apply to requests whose path starts with ``path``
(default ``/v1/requests/batch``); everything else is forwarded. ``close()``
(or leaving the ``with`` block) stops the listener, resets every open
connection and joins every thread.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

BATCH_PATH = "/v1/requests/batch"
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "host", "content-length"}
_ERRORS = {
    400: ("invalid_request", "The request was malformed."),
    401: ("invalid_token", "The token is missing, unknown, malformed or revoked."),
    408: ("request_timeout", "The request took too long."),
    413: ("payload_too_large", "The body is larger than 4194304 bytes."),
    429: ("rate_limited", "Too many requests: retry after the Retry-After seconds."),
    500: ("internal_error", "The server failed."),
    502: ("bad_gateway", "The upstream server failed."),
    503: ("unavailable", "The service is temporarily unavailable."),
    504: ("gateway_timeout", "The upstream server did not answer in time."),
}


def error_body(status: int) -> bytes:
    """An api.md error body for ``status``."""
    code, detail = _ERRORS.get(status, ("error", f"HTTP {status}"))
    return json.dumps({"error": code, "detail": detail}).encode()


@dataclass
class Seen:
    """One request the proxy received and what became of it."""

    method: str
    path: str
    started: float  # time.monotonic()
    ended: float | None = None
    status: int | None = None  # the status sent (None: no answer: reset/dropped)
    outcome: str = "pending"  # forwarded | injected | delayed | dropped | down | client-gone | upstream-error
    accepted: int | None = None  # from a forwarded 200 batch answer
    duplicates: int | None = None


@dataclass
class _Rule:
    kind: str  # "fail" | "delay"
    remaining: int
    path: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    forward: bool = True


class FaultProxy:
    def __init__(self, target: str, *, upstream_timeout: float = 120.0) -> None:
        self.target = target.rstrip("/")
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._holds: dict[str, float] = {}
        self._seen: list[Seen] = []
        self._down = False
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0
        self._listen()

    # -- lifecycle -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.1)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._acceptor = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                                          name="faultproxy-accept")
        self._acceptor.start()

    def _unlisten(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
            self._acceptor = None

    def close(self) -> None:
        self._closing.set()
        self._unlisten()
        self._reset_all()
        for t in list(self._threads):
            t.join(5)
        for c in self._clients:
            c.close()

    # -- faults ----------------------------------------------------------------

    def fail_next(self, n: int, status: int, headers: dict[str, str] | None = None,
                  body: bytes | None = None, path: str = BATCH_PATH) -> None:
        """Answer the next ``n`` matching requests with ``status`` without forwarding them."""
        hdrs = {"Retry-After": "1"} if headers is None else dict(headers)
        with self._lock:
            self._rules.append(_Rule("fail", n, path, status=status, headers=hdrs,
                                     body=error_body(status) if body is None else body))

    def delay_next(self, n: int, seconds: float, *, forward: bool = True, path: str = BATCH_PATH) -> None:
        """Slow backend for the next ``n`` matching requests.

        ``forward=True``: the backend gets the request at once (it does the
        work) and its answer is held ``seconds``. ``forward=False``: the
        request is never forwarded; after ``seconds`` the connection is reset.
        """
        with self._lock:
            self._rules.append(_Rule("delay", n, path, seconds=seconds, forward=forward))

    def hold(self, seconds: float, path: str = BATCH_PATH) -> None:
        """Hold every forwarded answer on ``path`` for ``seconds`` (0 ends it)."""
        with self._lock:
            if seconds > 0:
                self._holds[path] = seconds
            else:
                self._holds.pop(path, None)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._holds.clear()

    def down(self) -> None:
        """The backend vanishes: new connections are refused, open ones reset."""
        with self._lock:
            self._down = True
        self._unlisten()
        self._reset_all()

    def up(self) -> None:
        with self._lock:
            self._down = False
        if self._listener is None and not self._closing.is_set():
            self._listen()

    @property
    def is_down(self) -> bool:
        return self._down

    # -- what was seen ---------------------------------------------------------

    def seen(self, path: str | None = BATCH_PATH) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if path is None or s.path.startswith(path)]

    def count(self, path: str | None = BATCH_PATH, status: int | None | str = "any",
              outcome: str | None = None) -> int:
        return sum(1 for s in self.seen(path)
                   if (status == "any" or s.status == status) and (outcome is None or s.outcome == outcome))

    def counters(self) -> Counter[tuple[str, int | None]]:
        """``{(path, status): n}`` over every request seen (status None: no answer)."""
        with self._lock:
            return Counter((s.path.split("?", 1)[0], s.status) for s in self._seen)

    def in_flight(self, path: str | None = BATCH_PATH) -> int:
        return sum(1 for s in self.seen(path) if s.ended is None)

    def batch_totals(self) -> tuple[int, int]:
        """``(accepted, duplicates)`` summed over every 200 batch answer the backend gave."""
        seen = self.seen(BATCH_PATH)
        return (sum(s.accepted or 0 for s in seen), sum(s.duplicates or 0 for s in seen))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not met within {timeout:g} s; seen: {dict(self.counters())}")
            time.sleep(0.02)

    # -- plumbing --------------------------------------------------------------

    def _take_rule(self, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and path.startswith(rule.path):
                    rule.remaining -= 1
                    return rule
            self._rules = [r for r in self._rules if r.remaining > 0]
            return None

    def _hold_for(self, path: str) -> float:
        with self._lock:
            return next((s for p, s in self._holds.items() if path.startswith(p)), 0.0)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.target, timeout=self.upstream_timeout, trust_env=False)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed (down or close)
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._down or self._closing.is_set():
                _reset(conn)
                continue
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn, addr), daemon=True, name="faultproxy-conn")
            self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket, addr: Any) -> None:
        try:
            _Handler(conn, addr, self)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass
            self._threads.discard(threading.current_thread())

    def _reset_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _reset(conn)

    def _sleep(self, seconds: float) -> bool:
        """Sleep; False if the proxy is closing (or went down) meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._closing.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                return False
        return True


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): what a crashed server's kernel sends."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def __init__(self, conn: socket.socket, addr: Any, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(conn, addr, None)  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, headers: dict[str, str] | list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for name, value in items:
            if name.lower() not in _HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        # Head and body in one write: two small writes meet Nagle + delayed ACK (40 ms).
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        _reset(self.connection)

    def _proxy(self) -> None:
        proxy = self.proxy
        body = self._read_body()
        seen = Seen(self.command, self.path, time.monotonic())
        proxy._record(seen)
        try:
            self._dispatch(seen, body)
        except OSError:
            seen.outcome = "client-gone"
            self.close_connection = True
        finally:
            seen.ended = time.monotonic()

    def _dispatch(self, seen: Seen, body: bytes) -> None:
        proxy = self.proxy
        if proxy.is_down:
            seen.outcome = "down"
            self._drop()
            return
        rule = proxy._take_rule(self.path)
        if rule is not None and rule.kind == "fail":
            seen.outcome, seen.status = "injected", rule.status
            self._answer(rule.status, {"Content-Type": "application/json", **rule.headers}, rule.body)
            return
        if rule is not None and rule.kind == "delay" and not rule.forward:
            seen.outcome = "dropped"
            proxy._sleep(rule.seconds)
            self._drop()
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]
        try:
            upstream = proxy._client().request(self.command, self.path, headers=headers, content=body)
        except httpx.HTTPError:
            seen.outcome = "upstream-error"
            self._drop()
            return
        raw = upstream.content
        if upstream.status_code == 200 and self.path.startswith(BATCH_PATH):
            try:
                answer = json.loads(raw)
                seen.accepted, seen.duplicates = int(answer["accepted"]), int(answer["duplicates"])
            except (ValueError, KeyError, TypeError):
                pass
        delay = proxy._hold_for(self.path)
        if rule is not None and rule.kind == "delay":
            delay = max(delay, rule.seconds)
            seen.outcome = "delayed"
        else:
            seen.outcome = "forwarded"
        seen.status = upstream.status_code
        if delay and not proxy._sleep(delay):
            self._drop()
            return
        out_headers = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() != "content-encoding"]
        self._answer(upstream.status_code, out_headers, raw)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _proxy
