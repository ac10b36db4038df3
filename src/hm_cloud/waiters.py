"""Wakes long-polls the moment their pairing code is approved or denied.

One ``anyio.Event`` per waiting poll, keyed by the device code's hash; the
approve handler in the same process sets them. A poll also re-reads the
database every few seconds, so a deployment with several processes (where
the approval may land in another one) still answers within that delay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class PairingWaiters:
    def __init__(self) -> None:
        self._events: dict[str, set[anyio.Event]] = {}

    @contextmanager
    def watch(self, device_code_hash: str) -> Iterator[anyio.Event]:
        """An event set when ``notify`` is called for this code (register before checking)."""
        event = anyio.Event()
        self._events.setdefault(device_code_hash, set()).add(event)
        try:
            yield event
        finally:
            bucket = self._events.get(device_code_hash)
            if bucket is not None:
                bucket.discard(event)
                if not bucket:
                    del self._events[device_code_hash]

    def notify(self, device_code_hash: str) -> None:
        for event in self._events.get(device_code_hash, ()):
            event.set()

    def waiting(self) -> int:
        return sum(len(b) for b in self._events.values())
