"""A cloud client: one keep-alive HTTP/1.1 connection pumping hm_proto bytes.

``send(request)`` gives back a ``Response`` or a ``TransportFailure`` (kind
``connect``, ``timeout`` or ``broken``), ready to feed to the hm_proto state
machine that made the request. A kept-alive connection the server closed
meanwhile fails before any answer byte arrives: then, and only then, the
request is sent once more on a new connection.
"""

from __future__ import annotations

from hm_proto import (
    ClientConnection,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    TransportFailure,
    TunnelHandshake,
)

from .._backends.anyio import AsyncLock, AsyncStream, connect_tcp, current_time
from .._base import (
    DEFAULT_TIMEOUT,
    READ_SIZE,
    ClientSettings,
    connect_failure,
    remaining,
)


class AsyncCloudClient(ClientSettings):
    """``await send(request)`` → Response or TransportFailure; safe to share between tasks."""

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT,
        cafile: str | None = None,
        proxy: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout, cafile, proxy)
        self._stream: AsyncStream | None = None
        self._wire: ClientConnection | None = None
        self._lock = AsyncLock()

    async def __aenter__(self) -> AsyncCloudClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        stream, self._stream, self._wire = self._stream, None, None
        if stream is not None:
            await stream.aclose()

    async def _connect(self, deadline: float) -> AsyncStream:
        first_hop = self.proxy or self.base_url
        stream = await connect_tcp(
            first_hop.host, first_hop.port, remaining(deadline, current_time())
        )
        try:
            if self.proxy is not None:
                await self._open_tunnel(stream, deadline)
            if self._ssl_context is not None:
                stream = await stream.start_tls(
                    self._ssl_context, self.base_url.host, remaining(deadline, current_time())
                )
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def _open_tunnel(self, stream: AsyncStream, deadline: float) -> None:
        handshake = TunnelHandshake(self.base_url.authority)
        await stream.send(handshake.request_bytes(), remaining(deadline, current_time()))
        try:
            while not handshake.receive_data(
                await stream.receive(READ_SIZE, remaining(deadline, current_time()))
            ):
                pass
        except RemoteProtocolError as exc:
            raise OSError(f"{exc} (proxy {self.proxy})") from None
        if handshake.leftover:
            raise OSError(f"the proxy {self.proxy} sent bytes before the tunnel was used")

    async def send(
        self, request: Request, timeout: float | None = None
    ) -> Response | TransportFailure:
        """Send ``request`` and read the whole answer within ``timeout`` seconds."""
        limit = self.timeout if timeout is None else timeout
        async with self._lock:
            deadline = current_time() + limit
            try:
                return await self._send_locked(request, deadline, limit)
            except BaseException:
                await self._drop()  # cancelled mid-exchange: the connection state is unknown
                raise

    async def _send_locked(
        self, request: Request, deadline: float, limit: float
    ) -> Response | TransportFailure:
        for attempt in (1, 2):
            reused = self._stream is not None
            if self._stream is None:
                try:
                    self._stream = await self._connect(deadline)
                except TimeoutError:
                    return TransportFailure(
                        "timeout", f"no connection to {self.base_url} within {limit:g} s"
                    )
                except OSError as exc:
                    return TransportFailure("connect", connect_failure(self.base_url, exc))
                self._wire = ClientConnection(self.base_url.host_header, self.base_url.path_prefix)
            stream, wire = self._stream, self._wire
            assert wire is not None
            try:
                await stream.send(wire.send_request(request), remaining(deadline, current_time()))
                response = None
                while response is None:
                    data = await stream.receive(READ_SIZE, remaining(deadline, current_time()))
                    response = wire.receive_data(data)
            except TimeoutError:
                await self._drop()
                return TransportFailure(
                    "timeout", f"no answer from {self.base_url} within {limit:g} s"
                )
            except (OSError, ProtocolError) as exc:
                answer_started = wire.answer_started
                await self._drop()
                if reused and attempt == 1 and not answer_started:
                    continue
                return TransportFailure(
                    "broken", f"connection to {self.base_url} broke: {exc or type(exc).__name__}"
                )
            if wire.reusable:
                wire.start_next_cycle()
            else:
                await self._drop()
            return response
        raise AssertionError("unreachable")  # pragma: no cover
