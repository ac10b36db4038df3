"""Retry timing: full-jitter exponential backoff with a cap, and Retry-After.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the
wait before retry number ``attempt`` (0 for the first retry) is drawn
uniformly from ``[0, min(cap, base * 2**attempt))``. Spreading retries over
the whole interval keeps a fleet of daemons from hammering a recovering
backend in lock-step.

A ``Retry-After`` the server sent is a floor: we wait at least that long.
Only the delay-seconds form (``Retry-After: 120``) is understood. The
HTTP-date form needs a wall clock and a date parser, which the pure core does
not have (no ``time``/``datetime``); it is treated as absent and the jittered
backoff applies alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._codes import Entropy
from ._errors import LocalProtocolError

#: A Retry-After above this is clamped: a broken or hostile header must not
#: stop syncing for years. One day is far beyond any sane rate-limit window.
MAX_RETRY_AFTER = 86_400.0

# 2**attempt beyond this exceeds any cap we could be given; stop growing.
_MAX_EXPONENT = 60


def uniform(entropy: Entropy, low: float, high: float) -> float:
    """A float drawn uniformly from ``[low, high]`` with 53 bits of entropy.

    The unit draw is in ``[0, 1)``; scaling may round the top value to ``high``.
    """
    bits = int.from_bytes(entropy(7), "big") >> 3  # 56 bits -> 53
    return low + (high - low) * (bits / float(1 << 53))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header, or None (absent, a date, or junk)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return min(float(int(text)), MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait before a retry. ``base`` and ``cap`` are seconds."""

    base: float = 1.0
    cap: float = 300.0

    def ceiling(self, attempt: int) -> float:
        """The upper end of the jitter interval for retry number ``attempt``."""
        if attempt < 0:
            raise LocalProtocolError(f"retry attempts count from 0, got {attempt}")
        if attempt >= _MAX_EXPONENT:
            return self.cap
        return min(self.cap, self.base * float(1 << attempt))

    def delay(self, attempt: int, entropy: Entropy, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = first retry)."""
        jittered = uniform(entropy, 0.0, self.ceiling(attempt))
        if retry_after is not None:
            return max(jittered, min(retry_after, MAX_RETRY_AFTER))
        return jittered
