"""Transport-neutral HTTP request and response objects.

Every state machine in hm_proto emits :class:`Request` objects and consumes
:class:`Response` objects. A library user with an HTTP client of their own
sends ``method`` + ``target`` (relative to the cloud base URL) with
``headers`` and ``body`` and feeds the answer back as a :class:`Response`;
``hm_proto._wire`` turns them into HTTP/1.1 bytes for those who have only a
socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._errors import RemoteProtocolError

Headers = tuple[tuple[str, str], ...]


def _get_header(headers: Headers, name: str) -> str | None:
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


@dataclass(frozen=True, slots=True)
class Request:
    """One API call to make. ``target`` is a path with query, e.g. ``/v1/whoami``."""

    method: str
    target: str
    headers: Headers = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return _get_header(self.headers, name)


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to a :class:`Request`, as bytes and headers."""

    status: int
    headers: Headers = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return _get_header(self.headers, name)

    def json(self) -> Any:
        """Parse the body as JSON, raising RemoteProtocolError if it is not."""
        try:
            return json.loads(self.body.decode("utf-8")) if self.body else None
        except (UnicodeDecodeError, ValueError) as exc:
            raise RemoteProtocolError(
                f"the server answered {self.status} with a body that is not JSON"
            ) from exc

    def error_code(self) -> str | None:
        """The ``error`` member of an api.md error body, if there is one."""
        try:
            data = self.json()
        except RemoteProtocolError:
            return None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return str(data["error"])
        return None

    def error_detail(self) -> str:
        try:
            data = self.json()
        except RemoteProtocolError:
            return ""
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            return str(data["detail"])
        return ""


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """What a driver feeds in instead of a Response when no answer came.

    ``kind`` is ``"connect"`` (refused, DNS, TLS), ``"timeout"`` or
    ``"broken"`` (the connection dropped mid-answer). All are retryable.
    """

    kind: str
    detail: str = field(default="")


JSON_HEADERS: Headers = (("Content-Type", "application/json"), ("Accept", "application/json"))


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")
