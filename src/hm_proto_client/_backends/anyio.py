"""The async backend: anyio streams, so the client runs on asyncio and trio."""

from __future__ import annotations

import ssl
from types import TracebackType

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError)


def current_time() -> float:
    return anyio.current_time()


async def sleep(seconds: float) -> None:
    await anyio.sleep(max(0.0, seconds))


class AsyncStream:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def send(self, data: bytes, timeout: float) -> None:
        try:
            with anyio.fail_after(timeout):
                await self._stream.send(data)
        except _BROKEN as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc

    async def receive(self, max_bytes: int, timeout: float) -> bytes:
        """Up to ``max_bytes``; ``b""`` when the peer closed the connection."""
        try:
            with anyio.fail_after(timeout):
                return await self._stream.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except _BROKEN as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc

    async def start_tls(
        self, context: ssl.SSLContext, hostname: str, timeout: float
    ) -> AsyncStream:
        try:
            with anyio.fail_after(timeout):
                wrapped = await TLSStream.wrap(
                    self._stream, hostname=hostname, ssl_context=context,
                    standard_compatible=False,
                )
        except _BROKEN as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc
        return AsyncStream(wrapped)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self._stream)


async def connect_tcp(host: str, port: int, timeout: float) -> AsyncStream:
    try:
        with anyio.fail_after(timeout):
            return AsyncStream(await anyio.connect_tcp(host, port))
    except _BROKEN as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc


class AsyncLock:
    """anyio.Lock, made on first use: it belongs to the running event loop."""

    def __init__(self) -> None:
        self._lock: anyio.Lock | None = None

    async def __aenter__(self) -> None:
        if self._lock is None:
            self._lock = anyio.Lock()
        await self._lock.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lock is not None
        self._lock.release()
