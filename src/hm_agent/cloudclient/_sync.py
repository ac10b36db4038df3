"""Blocking cloud client: a socket (TLS for https) pumping hm_proto.ClientConnection bytes."""

from __future__ import annotations

import socket
import ssl
import threading
import time

from hm_proto import (
    ClientConnection,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    TransportFailure,
    TunnelHandshake,
)

from ._base import DEFAULT_TIMEOUT, READ_SIZE, ClientSettings


class _Timeout(Exception):
    pass


class SyncCloudClient(ClientSettings):
    """``send(request)`` → Response or TransportFailure; one keep-alive connection, thread-safe."""

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT,
        cafile: str | None = None,
        proxy: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout, cafile, proxy)
        self._sock: socket.socket | None = None
        self._wire: ClientConnection | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> SyncCloudClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._wire = None

    def _connect(self, deadline: float) -> socket.socket:
        url = self.base_url
        first_hop = self.proxy or url
        sock = socket.create_connection((first_hop.host, first_hop.port), timeout=_remaining(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.proxy is not None:
                self._open_tunnel(sock, deadline)
            if self._ssl_context is not None:
                sock.settimeout(_remaining(deadline))
                sock = self._ssl_context.wrap_socket(sock, server_hostname=url.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _open_tunnel(self, sock: socket.socket, deadline: float) -> None:
        handshake = TunnelHandshake(self.base_url.authority)
        sock.settimeout(_remaining(deadline))
        sock.sendall(handshake.request_bytes())
        try:
            while True:
                sock.settimeout(_remaining(deadline))
                if handshake.receive_data(sock.recv(READ_SIZE)):
                    break
        except RemoteProtocolError as exc:
            raise OSError(f"{exc} (proxy {self.proxy})") from None
        if handshake.leftover:
            raise OSError(f"the proxy {self.proxy} sent bytes before the tunnel was used")

    def send(self, request: Request, timeout: float | None = None) -> Response | TransportFailure:
        """Send ``request`` and read the whole answer within ``timeout`` seconds."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            # A kept-alive connection the server closed meanwhile fails before any
            # answer byte arrives: then, and only then, try once more on a new one.
            for attempt in (1, 2):
                reused = self._sock is not None
                if self._sock is None:
                    try:
                        self._sock = self._connect(deadline)
                    except (_Timeout, TimeoutError):
                        return TransportFailure(
                            "timeout", f"no connection to {self.base_url} within {limit:g} s"
                        )
                    except ssl.SSLError as exc:
                        return TransportFailure(
                            "connect", f"TLS with {self.base_url} failed: {exc}"
                        )
                    except OSError as exc:
                        return TransportFailure(
                            "connect", f"cannot connect to {self.base_url}: {exc}"
                        )
                    self._wire = ClientConnection(
                        self.base_url.host_header, self.base_url.path_prefix
                    )
                assert self._wire is not None
                try:
                    response = self._exchange(self._sock, self._wire, request, deadline)
                except (_Timeout, TimeoutError):
                    self._drop()
                    return TransportFailure(
                        "timeout", f"no answer from {self.base_url} within {limit:g} s"
                    )
                except (OSError, RemoteProtocolError, LocalProtocolError) as exc:
                    answer_started = self._wire.answer_started
                    self._drop()
                    if reused and attempt == 1 and not answer_started:
                        continue
                    return TransportFailure("broken", f"connection to {self.base_url} broke: {exc}")
                if self._wire.reusable:
                    self._wire.start_next_cycle()
                else:
                    self._drop()
                return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _exchange(
        sock: socket.socket, wire: ClientConnection, request: Request, deadline: float
    ) -> Response:
        sock.settimeout(_remaining(deadline))
        sock.sendall(wire.send_request(request))
        while True:
            sock.settimeout(_remaining(deadline))
            response = wire.receive_data(sock.recv(READ_SIZE))
            if response is not None:
                return response


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout()
    return left
