"""Exceptions raised by the protocol core.

Modelled on h11: a move *we* are not allowed to make raises
``LocalProtocolError``; something the peer sent that breaks the contract
raises ``RemoteProtocolError``. Both derive from ``ProtocolError`` so a driver
can catch one type.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error hm_proto raises."""


class LocalProtocolError(ProtocolError):
    """The caller asked the state machine for an illegal move."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message that break the API contract."""


class ApiError(ProtocolError):
    """An error answer of the cloud API, as api.md shapes it.

    ``status`` is the HTTP status, ``error`` the stable machine code and
    ``detail`` a human sentence that says what to do next. The backend raises
    these while validating input; clients build them from error responses.
    """

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(f"{status} {error}: {detail}" if detail else f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail

    def to_body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}
