"""A small HTTP CONNECT proxy on 127.0.0.1 for tests of the explicit cloud proxy.

    with ConnectProxy() as proxy:                 # proxy.url = http://127.0.0.1:PORT
        ...                                       # proxy.tunnels: the host:port targets opened
    with ConnectProxy(refuse=True) as proxy:      # answers 403 to every CONNECT
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class ConnectProxy:
    refuse: bool = False
    tunnels: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ConnectProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accepting.join(5)
        self._listener.close()
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        self._listener.settimeout(0.05)  # closing a socket does not wake a blocked accept()
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target = head.split(b" ", 2)[:2]
            if method != b"CONNECT" or self.refuse:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            host, _, port = target.decode().rpartition(":")
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target.decode())
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with upstream:
                pump = threading.Thread(target=_relay, args=(upstream, client), daemon=True)
                pump.start()
                _relay(client, upstream)
                pump.join(5)


def _relay(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
