"""Retry decisions, in one place for pairing, sync and the one-shot calls.

- :data:`RETRYABLE_STATUSES` and :func:`is_retryable_status`: which answers
  mean "the same request may succeed later" (408, 429 and every 5xx). Sync
  treats a 5xx outside ``RETRYABLE_STATUSES`` (500, 501, ...) as possibly
  caused by a poison row after ``SERVER_ERROR_ATTEMPTS`` tries in a row.
- :func:`parse_retry_after` / :func:`retry_after`: the delay-seconds form of
  ``Retry-After``, clamped to :data:`MAX_RETRY_AFTER`. The HTTP-date form
  needs a wall clock and a date parser, which the pure core does not have;
  it is treated as absent and the jittered backoff applies alone.
- :class:`BackoffPolicy`: full-jitter exponential backoff with a cap (AWS
  architecture blog, "Exponential Backoff And Jitter"): the wait before retry
  number ``attempt`` (0 for the first retry) is drawn uniformly from
  ``[floor, min(cap, base * 2**attempt))``, never below ``floor``. Spreading
  retries over the interval keeps a fleet of daemons from hammering a
  recovering backend in lock-step. Entropy is a parameter, like everywhere
  in hm_proto. A ``Retry-After`` the server sent is a floor too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._codes import Entropy
from ._errors import LocalProtocolError
from ._http import Response, TransportFailure

#: Answers that say "try again later" rather than "this request is wrong".
#: Every other 5xx is retryable as well (see :func:`is_retryable_status`).
RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})

#: A Retry-After above this is clamped: a broken or hostile header must not
#: stop syncing for years. One day is far beyond any sane rate-limit window.
MAX_RETRY_AFTER = 86_400.0

# 2**attempt beyond this exceeds any cap we could be given; stop growing.
_MAX_EXPONENT = 60


def is_retryable_status(status: int) -> bool:
    """408, 429 and every 5xx: the same request may succeed later."""
    return status in RETRYABLE_STATUSES or 500 <= status < 600


def is_retryable(answer: Response | TransportFailure) -> bool:
    """A transport failure, or a retryable status."""
    return isinstance(answer, TransportFailure) or is_retryable_status(answer.status)


def uniform(entropy: Entropy, low: float, high: float) -> float:
    """A float drawn uniformly from ``[low, high]`` with 53 bits of entropy.

    The unit draw is in ``[0, 1)``; scaling may round the top value to ``high``.
    """
    raw = entropy(7)
    if len(raw) != 7:
        raise LocalProtocolError(f"entropy(7) returned {len(raw)} bytes")
    bits = int.from_bytes(raw, "big") >> 3  # 56 bits -> 53
    return low + (high - low) * (bits / float(1 << 53))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header value, clamped; None if absent, a date or junk."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return min(float(int(text)), MAX_RETRY_AFTER)


def retry_after(answer: Response | TransportFailure) -> float | None:
    """The clamped ``Retry-After`` of an answer in seconds, or None."""
    if isinstance(answer, TransportFailure):
        return None
    return parse_retry_after(answer.header("Retry-After"))


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait before a retry. ``base``, ``cap`` and ``floor`` are seconds."""

    base: float = 1.0
    cap: float = 300.0
    floor: float = 0.0

    def ceiling(self, attempt: int) -> float:
        """The upper end of the jitter interval for retry number ``attempt``."""
        if attempt < 0:
            raise LocalProtocolError(f"retry attempts count from 0, got {attempt}")
        if attempt >= _MAX_EXPONENT:
            return self.cap
        return min(self.cap, self.base * float(1 << attempt))

    def delay(
        self, attempt: int, entropy: Entropy, retry_after: float | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = first retry)."""
        ceiling = max(self.floor, self.ceiling(attempt))
        wait = uniform(entropy, self.floor, ceiling)
        if retry_after is not None:
            return max(wait, min(retry_after, MAX_RETRY_AFTER))
        return wait
