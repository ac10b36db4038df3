"""Drive a PairingClient to its end over a client: the clock and sleeps live here.

Returns Approved, Denied or Expired. A refusal (e.g. 404 from a wrong base
URL) or a server that stays unreachable while asking for a code raises
PairingFailed with a message that says what to do. Cancellation (Ctrl-C,
a cancelled task) cancels the PairingClient and propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hm_proto import (
    UNREACHABLE,
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
from .._base import PairingFailed, lasting
from .client import AsyncCloudClient

PairingResult = Approved | Denied | Expired
OnCode = Callable[[CodeIssued], None]
OnEvent = Callable[[PollEvent], None]
OnRetry = Callable[[int, int, RetryScheduled, float], None]
"""Called before each wait for another start attempt: (failed attempt, attempts, event, seconds)."""


async def run_pairing_async(
    client: AsyncCloudClient,
    pairing: PairingClient,
    on_code: OnCode,
    *,
    on_event: OnEvent | None = None,
    on_retry: OnRetry | None = None,
    clock: Callable[[], float] = current_time,
    sleep: Callable[[float], Awaitable[None]] = sleep,
) -> PairingResult:
    """Pair; ``on_code`` is called once with the code to show the user.

    A start that fails in a way retrying cannot heal (TLS mismatch, unknown
    host) gives up at once; other failures are retried as long as the
    PairingClient allows (``start_attempts``, an hm_proto rule), each
    announced to ``on_retry`` before the wait.
    """
    try:
        answer = await client.send(pairing.start_request())
        started = pairing.receive_start(answer, clock())
        attempt = 1
        while isinstance(started, RetryScheduled):
            if lasting(answer):
                pairing.cancel()
                raise _unreachable(started.reason, client.base_url, True)
            delay = max(started.retry_at - clock(), 0.0)
            if on_retry is not None:
                on_retry(attempt, pairing.start_attempts, started, delay)
            await sleep(delay)
            answer = await client.send(pairing.start_request())
            started = pairing.receive_start(answer, clock())
            attempt += 1
        if isinstance(started, PairingError) and started.error == UNREACHABLE:
            raise _unreachable(started.detail, client.base_url, lasting(answer))
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


def _unreachable(reason: str, base_url: object, hopeless: bool = False) -> PairingFailed:
    if hopeless:  # trying again would not help: the URL is wrong
        return PairingFailed(
            f"cannot get a pairing code from {base_url} ({reason}); "
            "check --base-url: the scheme (http:// or https://) and the host name"
        )
    return PairingFailed(
        f"cannot get a pairing code from {base_url} ({reason}); "
        "check the network and --base-url, then run the command again"
    )


def _result(pairing: PairingClient, base_url: object) -> PairingResult:
    outcome = pairing.outcome
    if isinstance(outcome, PairingError):
        raise _refused(outcome, base_url)
    assert isinstance(outcome, Approved | Denied | Expired), outcome
    return outcome
