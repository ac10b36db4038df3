"""Drive a PairingClient to its end over a client: the clock and sleeps live here.

Returns Approved, Denied or Expired. A refusal (e.g. 404 from a wrong base
URL) or a server that stays unreachable while asking for a code raises
PairingFailed with a message that says what to do. Cancellation (Ctrl-C,
a cancelled task) cancels the PairingClient and propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hm_proto import (
    Approved,
    CodeIssued,
    Denied,
    Expired,
    PairingClient,
    PairingError,
    PollEvent,
    RetryScheduled,
)

from .._backends.anyio import current_time, sleep
from .._base import PairingFailed
from .client import AsyncCloudClient

#: Ask for a code this many times while the cloud is unreachable, then give up.
DEFAULT_START_ATTEMPTS = 5

PairingResult = Approved | Denied | Expired
OnCode = Callable[[CodeIssued], None]
OnEvent = Callable[[PollEvent], None]


async def run_pairing_async(
    client: AsyncCloudClient,
    pairing: PairingClient,
    on_code: OnCode,
    *,
    on_event: OnEvent | None = None,
    start_attempts: int = DEFAULT_START_ATTEMPTS,
    clock: Callable[[], float] = current_time,
    sleep: Callable[[float], Awaitable[None]] = sleep,
) -> PairingResult:
    """Pair; ``on_code`` is called once with the code to show the user."""
    try:
        for attempt in range(1, start_attempts + 1):
            answer = await client.send(pairing.start_request())
            started = pairing.receive_start(answer, clock())
            if not isinstance(started, RetryScheduled):
                break
            if attempt == start_attempts:
                pairing.cancel()
                raise _unreachable(started, client.base_url)
            await sleep(started.retry_at - clock())
        if isinstance(started, CodeIssued):
            on_code(started)
        while not pairing.is_done:
            now = clock()
            request = pairing.next_poll(now)
            if request is None:
                deadline = pairing.next_deadline()
                if deadline is not None:
                    await sleep(deadline - now)
                continue
            answer = await client.send(request, pairing.poll_timeout)
            event = pairing.receive_poll(answer, clock())
            if on_event is not None:
                on_event(event)
    except BaseException:
        pairing.cancel()  # Ctrl-C, cancellation and errors alike: no request after this
        raise
    return _result(pairing, client.base_url)


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
