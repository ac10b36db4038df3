"""The blocking backend: sockets with timeouts, a thread lock, time.sleep."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from types import TracebackType


def current_time() -> float:
    return time.monotonic()


def sleep(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


class SyncStream:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes, timeout: float) -> None:
        self._sock.settimeout(timeout)
        self._sock.sendall(data)

    def receive(self, max_bytes: int, timeout: float) -> bytes:
        """Up to ``max_bytes``; ``b""`` when the peer closed the connection."""
        self._sock.settimeout(timeout)
        return self._sock.recv(max_bytes)

    def start_tls(self, context: ssl.SSLContext, hostname: str, timeout: float) -> SyncStream:
        self._sock.settimeout(timeout)
        return SyncStream(context.wrap_socket(self._sock, server_hostname=hostname))

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def connect_tcp(host: str, port: int, timeout: float) -> SyncStream:
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return SyncStream(sock)


class SyncLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
