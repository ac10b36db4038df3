"""HTTP/1.1 bytes for hm_proto Requests and Responses, through h11.

The only module of the project that speaks HTTP/1.1 on the client side. A
driver with nothing but a socket does::

    conn = ClientConnection("api.haltonmeter.com")
    sock.sendall(conn.send_request(request))
    while (response := conn.receive_data(sock.recv(65536))) is None:
        pass
    if conn.reusable:
        conn.start_next_cycle()    # keep-alive: the next request on the same socket

``receive_data(b"")`` tells it the peer closed the connection. h11's own
errors come out as hm_proto's LocalProtocolError / RemoteProtocolError.
"""

from __future__ import annotations

import h11

from ._errors import LocalProtocolError, RemoteProtocolError
from ._http import Request, Response

USER_AGENT = "halton-meter-hm_proto"
MAX_RESPONSE_BODY = 16 * 1024 * 1024  # far above any API answer; stops a runaway peer


class ClientConnection:
    """One HTTP/1.1 client connection to ``host`` (the Host header, with port if not default).

    ``path_prefix`` (e.g. ``/api`` when the base URL is ``https://x/api``) is
    put in front of every request target.
    """

    def __init__(self, host: str, path_prefix: str = "") -> None:
        if not host or any(ch in host for ch in "\r\n /"):
            raise LocalProtocolError(f"not a host name: {host!r}")
        if path_prefix and (not path_prefix.startswith("/") or path_prefix.endswith("/")):
            raise LocalProtocolError(
                f"path_prefix must start with '/' and not end with one, got {path_prefix!r}"
            )
        self.host = host
        self.path_prefix = path_prefix
        self._conn = h11.Connection(our_role=h11.CLIENT)
        self._status = 0
        self._headers: tuple[tuple[str, str], ...] = ()
        self._body = bytearray()
        self._received_any = False  # any byte of the current answer arrived

    @property
    def reusable(self) -> bool:
        """True when the last exchange finished cleanly and both sides keep the connection."""
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    @property
    def idle(self) -> bool:
        """True before any request on this connection (or after start_next_cycle)."""
        return self._conn.our_state is h11.IDLE and self._conn.their_state is h11.IDLE

    @property
    def answer_started(self) -> bool:
        """True once any byte of the answer was understood (a retry is no longer safe)."""
        return self._received_any

    def start_next_cycle(self) -> None:
        try:
            self._conn.start_next_cycle()
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"the connection cannot be reused: {exc}") from None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers = ()
        self._body = bytearray()
        self._received_any = False

    def send_request(self, request: Request) -> bytes:
        """The bytes of ``request`` (head and body) to write to the socket."""
        if not request.target.startswith("/"):
            raise LocalProtocolError(
                f"a request target must start with '/', got {request.target!r}"
            )
        names = {name.lower() for name, _ in request.headers}
        headers = [("Host", self.host)]
        if "user-agent" not in names:
            headers.append(("User-Agent", USER_AGENT))
        headers.extend((name, value) for name, value in request.headers if name.lower() != "host")
        if "content-length" not in names and (
            request.body or request.method not in ("GET", "HEAD")
        ):
            headers.append(("Content-Length", str(len(request.body))))
        try:
            head = h11.Request(
                method=request.method, target=self.path_prefix + request.target, headers=headers
            )
            out = self._conn.send(head) or b""  # send() gives None only for ConnectionClosed
            if request.body:
                out += self._conn.send(h11.Data(data=request.body)) or b""
            out += self._conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(
                f"cannot send {request.method} {request.target}: {exc}"
            ) from None
        return out

    def receive_data(self, data: bytes) -> Response | None:
        """Feed bytes read from the socket (``b""`` at EOF); the Response once complete."""
        if data:
            self._received_any = True
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue and friends: the real answer follows
                if isinstance(event, h11.Response):
                    self._status = event.status_code
                    self._headers = tuple(
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in event.headers
                    )
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > MAX_RESPONSE_BODY:
                        raise RemoteProtocolError(
                            f"the answer is larger than {MAX_RESPONSE_BODY} bytes"
                        )
                elif isinstance(event, h11.EndOfMessage):
                    return Response(self._status, self._headers, bytes(self._body))
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    raise RemoteProtocolError(
                        "the server closed the connection before the answer was complete"
                    )
        except h11.RemoteProtocolError as exc:
            if not data:  # h11 words an early EOF as a protocol error
                raise RemoteProtocolError(
                    "the server closed the connection before the answer was complete"
                ) from None
            raise RemoteProtocolError(f"the server sent malformed HTTP: {exc}") from None
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot read an answer now: {exc}") from None


class TunnelHandshake:
    """``CONNECT host:port`` through an HTTP proxy, for a user who must use one.

    ``request_bytes()`` is what to send to the proxy; feed its answer to
    ``receive_data`` until it returns True (tunnel open). A refusal raises
    RemoteProtocolError with the proxy's status line. Bytes the proxy sent
    after its answer (none for a well-behaved proxy) are in ``leftover``.
    """

    def __init__(self, authority: str) -> None:
        if not authority or any(ch in authority for ch in "\r\n /"):
            raise LocalProtocolError(f"not a host:port to tunnel to: {authority!r}")
        self.authority = authority
        self.leftover = b""
        self._conn = h11.Connection(our_role=h11.CLIENT)

    def request_bytes(self) -> bytes:
        try:
            head = self._conn.send(
                h11.Request(
                    method="CONNECT",
                    target=self.authority,
                    headers=[("Host", self.authority), ("User-Agent", USER_AGENT)],
                )
            )
            tail = self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from exc
        return (head or b"") + (tail or b"")

    def receive_data(self, data: bytes) -> bool:
        if not data:
            raise RemoteProtocolError("the proxy closed the connection before answering CONNECT")
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    return False
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    if 200 <= event.status_code < 300:
                        self.leftover = bytes(self._conn.trailing_data[0])
                        return True
                    reason = event.reason.decode("latin-1", "replace")
                    raise RemoteProtocolError(
                        f"the proxy refused to tunnel to {self.authority}: {event.status_code} {reason}"
                    )
        except h11.RemoteProtocolError as exc:
            raise RemoteProtocolError(f"the proxy's answer to CONNECT is not HTTP: {exc}") from exc
