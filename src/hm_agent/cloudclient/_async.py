"""anyio cloud client (asyncio or trio): a byte stream pumping hm_proto.ClientConnection bytes."""

from __future__ import annotations

import ssl

import anyio
import anyio.abc

from hm_proto import (
    ClientConnection,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    TransportFailure,
    TunnelHandshake,
)

from ._base import DEFAULT_TIMEOUT, READ_SIZE, BaseUrl, ClientSettings

_BROKEN = (
    OSError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    anyio.ClosedResourceError,
    RemoteProtocolError,
    LocalProtocolError,
)


class AsyncCloudClient(ClientSettings):
    """``await send(request)`` → Response or TransportFailure; one keep-alive connection."""

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT,
        cafile: str | None = None,
        proxy: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout, cafile, proxy)
        self._stream: anyio.abc.ByteStream | None = None
        self._wire: ClientConnection | None = None
        self._lock: anyio.Lock | None = None  # made lazily: it belongs to the running loop
        self._connecting = False  # for the timeout message: no connection yet, or no answer

    async def __aenter__(self) -> AsyncCloudClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        stream, self._stream, self._wire = self._stream, None, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)

    async def _connect(self) -> anyio.abc.ByteStream:
        url = self.base_url
        if self.proxy is not None:
            return await self._connect_through_proxy(self.proxy)
        if self._ssl_context is None:
            return await anyio.connect_tcp(url.host, url.port)
        return await anyio.connect_tcp(
            url.host, url.port, tls=True, ssl_context=self._ssl_context, tls_hostname=url.host
        )

    async def _connect_through_proxy(self, proxy: BaseUrl) -> anyio.abc.ByteStream:
        from anyio.streams.tls import TLSStream

        stream: anyio.abc.ByteStream = await anyio.connect_tcp(proxy.host, proxy.port)
        try:
            handshake = TunnelHandshake(self.base_url.authority)
            await stream.send(handshake.request_bytes())
            try:
                while not handshake.receive_data(await stream.receive(READ_SIZE)):
                    pass
            except anyio.EndOfStream:
                handshake.receive_data(b"")
            if handshake.leftover:
                raise OSError(f"the proxy {proxy} sent bytes before the tunnel was used")
            if self._ssl_context is not None:
                stream = await TLSStream.wrap(
                    stream, hostname=self.base_url.host, ssl_context=self._ssl_context,
                    standard_compatible=False,
                )
        except RemoteProtocolError as exc:
            await anyio.aclose_forcefully(stream)
            raise OSError(f"{exc} (proxy {proxy})") from None
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return stream

    async def send(
        self, request: Request, timeout: float | None = None
    ) -> Response | TransportFailure:
        """Send ``request`` and read the whole answer within ``timeout`` seconds."""
        limit = self.timeout if timeout is None else timeout
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            try:
                with anyio.fail_after(limit):
                    return await self._send_locked(request)
            except TimeoutError:
                await self._drop()
                what = "connection to" if self._connecting else "answer from"
                return TransportFailure("timeout", f"no {what} {self.base_url} within {limit:g} s")
            except BaseException:
                await self._drop()  # cancelled mid-exchange: the connection state is unknown
                raise

    async def _send_locked(self, request: Request) -> Response | TransportFailure:
        # A kept-alive connection the server closed meanwhile fails before any
        # answer byte arrives: then, and only then, try once more on a new one.
        for attempt in (1, 2):
            reused = self._stream is not None
            if self._stream is None:
                self._connecting = True
                try:
                    self._stream = await self._connect()
                except ssl.SSLError as exc:
                    return TransportFailure("connect", f"TLS with {self.base_url} failed: {exc}")
                except (OSError, anyio.BrokenResourceError) as exc:
                    cause = exc.__cause__ or exc
                    if isinstance(cause, ssl.SSLError):
                        return TransportFailure(
                            "connect", f"TLS with {self.base_url} failed: {cause}"
                        )
                    return TransportFailure("connect", f"cannot connect to {self.base_url}: {exc}")
                self._wire = ClientConnection(self.base_url.host_header, self.base_url.path_prefix)
            self._connecting = False
            stream, wire = self._stream, self._wire
            assert wire is not None
            try:
                await stream.send(wire.send_request(request))
                response = None
                while response is None:
                    try:
                        data = await stream.receive(READ_SIZE)
                    except anyio.EndOfStream:
                        data = b""
                    response = wire.receive_data(data)
            except _BROKEN as exc:
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
