"""What both cloud clients share: the parsed base URL, the proxy and the TLS context.

Neither client ever looks at HTTPS_PROXY / HTTP_PROXY: a metering daemon is
itself the proxy those variables point programs at, so honouring them would
send its own uploads through its own interception (or nowhere when it is
down). The clients open a TCP connection straight to the base URL's host,
unless they are given a proxy explicitly (``proxy="http://proxy:3128"``):
then they tunnel through it with CONNECT (``hm_proto.TunnelHandshake``).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 30.0
READ_SIZE = 65536


def remaining(deadline: float, now: float) -> float:
    """Seconds left before ``deadline``; TimeoutError once it has passed."""
    left = deadline - now
    if left <= 0:
        raise TimeoutError()
    return left


_TLS_FAILED = "TLS with "
_NO_SUCH_HOST = "no such host: "


def connect_failure(base_url: object, exc: BaseException) -> str:
    """One line for a failed connect: TLS problems, unknown host names and refusals named
    as such, wherever they hide (causes, contexts, exception groups; :func:`lasting`
    recognises the first two)."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            return f"{_TLS_FAILED}{base_url} failed: {cause}"
    for cause in causes:
        if isinstance(cause, socket.gaierror) and cause.errno in _NXDOMAIN:
            return f"{_NO_SUCH_HOST}{base_url} ({cause.strerror or cause})"
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return f"cannot connect to {base_url}: connection refused (nothing listens there)"
    return f"cannot connect to {base_url}: {exc or type(exc).__name__}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cause = todo.pop(0)
        if id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        if isinstance(cause, BaseExceptionGroup):
            todo.extend(cause.exceptions)
        todo.extend(c for c in (cause.__cause__, cause.__context__) if c is not None)


# getaddrinfo's "this name does not exist" (not EAI_AGAIN, a resolver that may come back).
_NXDOMAIN = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)}


def lasting(answer: object) -> bool:
    """A failure that trying again will not heal: a TLS mismatch (e.g. https:// to an
    http server) or a host name that does not exist. Pairing gives up at once on these."""
    from hm_proto import TransportFailure

    return isinstance(answer, TransportFailure) and answer.detail.startswith((_TLS_FAILED, _NO_SUCH_HOST))


class CloudClientError(Exception):
    """A cloud client problem the user can act on; the message says how."""


class BadBaseUrl(CloudClientError, ValueError):
    """The configured base URL cannot be used."""


class PairingFailed(CloudClientError):
    """Pairing cannot go on: the server refused it, or stayed unreachable."""


@dataclass(frozen=True, slots=True)
class BaseUrl:
    scheme: str  # "http" or "https"
    host: str  # what to connect to (IPv6 without brackets)
    port: int
    path_prefix: str  # "" or "/something", no trailing slash
    host_header: str  # Host header / TLS name form, with the port when not the default

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """``host:port`` with the port always present: the target of a CONNECT."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{shown}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.path_prefix}"


def parse_base_url(text: str) -> BaseUrl:
    """``https://api.haltonmeter.com`` or ``http://127.0.0.1:8787/prefix``; BadBaseUrl otherwise."""
    hint = "use a URL like https://api.haltonmeter.com (see --base-url)"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise BadBaseUrl(f"cannot use {text!r} as the cloud base URL ({exc}): {hint}") from None
    if parts.scheme not in ("http", "https"):
        raise BadBaseUrl(
            f"the cloud base URL must start with https:// or http://, got {text!r}: {hint}"
        )
    if not parts.hostname:
        raise BadBaseUrl(f"the cloud base URL {text!r} has no host name: {hint}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise BadBaseUrl(
            f"the cloud base URL {text!r} must not carry a query, fragment or credentials: {hint}"
        )
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port in (None, default_port) else f"{shown}:{port}"
    return BaseUrl(
        scheme=parts.scheme,
        host=host,
        port=port or default_port,
        path_prefix=parts.path.rstrip("/"),
        host_header=host_header,
    )


def parse_proxy_url(text: str) -> BaseUrl:
    """An explicit HTTP proxy for the cloud, ``http://proxy.corp:3128``; BadBaseUrl otherwise."""
    hint = "use a URL like http://proxy.example.com:3128 ([cloud] proxy in config.toml)"
    try:
        parsed = parse_base_url(text)
    except BadBaseUrl as exc:
        raise BadBaseUrl(f"cannot use {text!r} as the cloud proxy: {hint}") from exc
    if parsed.tls or parsed.path_prefix:
        raise BadBaseUrl(f"the cloud proxy must be a plain http:// proxy address, got {text!r}: {hint}")
    return parsed


def make_ssl_context(cafile: str | None = None) -> ssl.SSLContext:
    """Verifying TLS context: the system store plus certifi, or only ``cafile`` if given."""
    if cafile is not None:
        try:
            return ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise CloudClientError(
                f"cannot load the CA file {cafile!r} ({exc}): pass a PEM file of CA certificates"
            ) from None
    context = ssl.create_default_context()
    try:
        import certifi
    except ImportError:  # the system store alone then
        return context
    context.load_verify_locations(cafile=certifi.where())
    return context


class ClientSettings:
    """Where and how both clients connect: base URL, optional proxy, timeout, TLS trust."""

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT,
        cafile: str | None = None,
        proxy: str | None = None,
    ) -> None:
        self.base_url: BaseUrl = parse_base_url(base_url)
        self.proxy: BaseUrl | None = parse_proxy_url(proxy) if proxy else None
        self.timeout = timeout
        self._ssl_context = make_ssl_context(cafile) if self.base_url.tls else None
