"""Outcomes shared by the one-shot calls (whoami, totals, revoke).

Each call's ``receive_*`` function answers with its own success type or one
of these: :class:`Unauthorised` (the token is bad or revoked: stop and ask
the user to pair again), :class:`RetryLater` (nothing is wrong with the
request; try again after ``retry_after`` seconds if the server said so) or
:class:`CallFailed` (the server refused the request for good).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._http import Response, TransportFailure
from ._retry import is_retryable, retry_after


@dataclass(frozen=True, slots=True)
class Unauthorised:
    """401: the token is missing, unknown, malformed or revoked."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class RetryLater:
    """A transport failure, 408, 429 or 5xx: the same request may succeed later.

    ``retry_after`` is the server's ``Retry-After`` in seconds (clamped), if it sent one.
    """

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class CallFailed:
    """Any other error answer: retrying the same request will not help."""

    status: int
    error: str
    detail: str


def describe(answer: Response | TransportFailure) -> str:
    """One line saying what went wrong, for logs and RetryLater.reason."""
    if isinstance(answer, TransportFailure):
        return f"{answer.kind}: {answer.detail}" if answer.detail else answer.kind
    code = answer.error_code()
    detail = answer.error_detail()
    text = f"HTTP {answer.status}"
    if code:
        text += f" {code}"
    if detail:
        text += f": {detail}"
    return text


def classify_failure(answer: Response | TransportFailure) -> Unauthorised | RetryLater | CallFailed:
    """The outcome of an answer that is not the call's success status."""
    if isinstance(answer, TransportFailure):
        return RetryLater(describe(answer))
    if answer.status == 401:
        return Unauthorised(answer.error_detail() or "the token was refused")
    if is_retryable(answer):
        return RetryLater(describe(answer), retry_after(answer))
    return CallFailed(answer.status, answer.error_code() or "", answer.error_detail())
