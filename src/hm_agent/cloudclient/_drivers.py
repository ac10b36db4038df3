"""Drive a PairingClient to its end over a cloud client: the clock and sleeps live here.

Both drivers return Approved, Denied or Expired. A refusal (e.g. 404 from a
wrong --base-url) or a server that stays unreachable while asking for a code
raises PairingFailed with a message that says what to do. Ctrl-C (sync) or
cancellation (async) cancels the PairingClient and propagates.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from hm_proto import (
    Approved,
    CodeIssued,
    Denied,
    Expired,
    PairingClient,
    PairingError,
    PollEvent,
    Request,
    RetryScheduled,
)

from ._async import AsyncCloudClient
from ._base import CloudClientError
from ._sync import SyncCloudClient

DEFAULT_START_ATTEMPTS = 5

PairingResult = Approved | Denied | Expired
OnCode = Callable[[CodeIssued], None]
OnEvent = Callable[[PollEvent], None]


class PairingFailed(CloudClientError):
    pass


def _refused(error: PairingError, base_url: object) -> PairingFailed:
    what = f"{error.status} {error.error}".strip() if error.status else error.error
    detail = f": {error.detail}" if error.detail else ""
    hint = (
        "check --base-url" if error.status == 404 else "run the command again, or check --base-url"
    )
    return PairingFailed(f"{base_url} refused pairing ({what}{detail}); {hint}")


def _unreachable(event: RetryScheduled, base_url: object) -> PairingFailed:
    return PairingFailed(
        f"cannot get a pairing code from {base_url} ({event.reason}); "
        "check the network and --base-url, then run the command again"
    )


def _result(pairing: PairingClient, base_url: object) -> PairingResult:
    outcome = pairing.outcome
    if isinstance(outcome, PairingError):
        raise _refused(outcome, base_url)
    assert isinstance(outcome, Approved | Denied | Expired), outcome
    return outcome


def run_pairing(
    client: SyncCloudClient,
    pairing: PairingClient,
    on_code: OnCode,
    *,
    on_event: OnEvent | None = None,
    start_attempts: int = DEFAULT_START_ATTEMPTS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PairingResult:
    """Pair over a blocking client; ``on_code`` is called once with the code to show."""
    try:
        for attempt in range(1, start_attempts + 1):
            started = pairing.receive_start(client.send(pairing.start_request()), clock())
            if not isinstance(started, RetryScheduled):
                break
            if attempt == start_attempts:
                pairing.cancel()
                raise _unreachable(started, client.base_url)
            sleep(max(0.0, started.retry_at - clock()))
        if isinstance(started, CodeIssued):
            on_code(started)
        while not pairing.is_done:
            now = clock()
            request: Request | None = pairing.next_poll(now)
            if request is None:
                deadline = pairing.next_deadline()
                if deadline is not None:
                    sleep(max(0.0, deadline - now))
                continue
            event = pairing.receive_poll(client.send(request, pairing.poll_timeout), clock())
            if on_event is not None:
                on_event(event)
    except BaseException:
        pairing.cancel()  # Ctrl-C and errors alike: no request after this
        raise
    return _result(pairing, client.base_url)


async def run_pairing_async(
    client: AsyncCloudClient,
    pairing: PairingClient,
    on_code: OnCode,
    *,
    on_event: OnEvent | None = None,
    start_attempts: int = DEFAULT_START_ATTEMPTS,
) -> PairingResult:
    """Pair over an anyio client (asyncio or trio); cancel the task to cancel pairing."""
    clock = anyio.current_time
    try:
        for attempt in range(1, start_attempts + 1):
            answer = await client.send(pairing.start_request())
            started = pairing.receive_start(answer, clock())
            if not isinstance(started, RetryScheduled):
                break
            if attempt == start_attempts:
                pairing.cancel()
                raise _unreachable(started, client.base_url)
            await anyio.sleep(max(0.0, started.retry_at - clock()))
        if isinstance(started, CodeIssued):
            on_code(started)
        while not pairing.is_done:
            now = clock()
            request = pairing.next_poll(now)
            if request is None:
                deadline = pairing.next_deadline()
                if deadline is not None:
                    await anyio.sleep(max(0.0, deadline - now))
                continue
            answer = await client.send(request, pairing.poll_timeout)
            event = pairing.receive_poll(answer, clock())
            if on_event is not None:
                on_event(event)
    except BaseException:
        pairing.cancel()
        raise
    return _result(pairing, client.base_url)
