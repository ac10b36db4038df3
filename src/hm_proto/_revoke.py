"""Calls made with the sync token outside the upload loop: revoke and whoami.

Revoke follows RFC 7009: 200 means revoked, and a 401 means the token is
already unusable, which is what we wanted, so both end the disconnect.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import RemoteProtocolError
from ._http import JSON_HEADERS, Request, Response, TransportFailure, bearer
from ._outcomes import CallFailed, RetryLater, Unauthorised, classify_failure

REVOKE_PATH = "/v1/pairing/revoke"
WHOAMI_PATH = "/v1/whoami"


@dataclass(frozen=True, slots=True)
class Revoked:
    """The token is unusable now. ``already`` when the server answered 401."""

    already: bool = False


RevokeOutcome = Revoked | RetryLater | CallFailed


def revoke_request(token: str) -> Request:
    return Request("POST", REVOKE_PATH, (*JSON_HEADERS, bearer(token)), b"{}")


def receive_revoke(answer: Response | TransportFailure) -> RevokeOutcome:
    if isinstance(answer, Response) and answer.status == 200:
        return Revoked()
    outcome = classify_failure(answer)
    if isinstance(outcome, Unauthorised):
        return Revoked(already=True)
    return outcome


@dataclass(frozen=True, slots=True)
class WhoAmI:
    workspace_id: str
    workspace_slug: str
    workspace_name: str
    machine_id: str
    hostname: str
    # The workspace's retention in days (None: keeps everything; absent from older servers).
    retention_days: int | None = None
    # The workspace accepts request bodies (opt-in body sync; False from older servers).
    accept_bodies: bool = False


_WHOAMI_TEXT = ("workspace_id", "workspace_slug", "workspace_name", "machine_id", "hostname")

WhoAmIOutcome = WhoAmI | Unauthorised | RetryLater | CallFailed


def whoami_request(token: str) -> Request:
    return Request("GET", WHOAMI_PATH, (("Accept", "application/json"), bearer(token)))


def parse_whoami(answer: Response | TransportFailure) -> WhoAmIOutcome:
    if isinstance(answer, TransportFailure) or answer.status != 200:
        return classify_failure(answer)
    data = answer.json()
    if not isinstance(data, dict):
        raise RemoteProtocolError("whoami: the answer is not a JSON object")
    values: dict[str, str] = {}
    for key in _WHOAMI_TEXT:
        value = data.get(key)
        if not isinstance(value, str):
            raise RemoteProtocolError(f"whoami: the server sent no usable {key!r}")
        values[key] = value
    days = data.get("retention_days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36_500):
        raise RemoteProtocolError(f"whoami: retention_days {days!r} is not a number of days")
    accept = data.get("accept_bodies", False)
    if not isinstance(accept, bool):
        raise RemoteProtocolError(f"whoami: accept_bodies {accept!r} is not true or false")
    return WhoAmI(**values, retention_days=days, accept_bodies=accept)
