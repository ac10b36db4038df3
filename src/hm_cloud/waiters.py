"""Wakes long-polls the moment their pairing code is approved, denied or cancelled.

One ``anyio.Event`` per waiting poll, keyed by the device code's hash; the
handler that changes the code in the same process sets them. With several
server processes the change may land in another one:

* on PostgreSQL every process LISTENs on the ``hm_pairing`` channel (one
  thread and one connection per process, started by the first long-poll) and
  the changing process sends ``NOTIFY hm_pairing, '<code hash>'``, so a poll
  in any process answers at once;
* a poll also re-reads the database every few seconds (``recheck_seconds``),
  the fallback on SQLite and while the listener reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from sqlalchemy import Engine, text

log = logging.getLogger("hm_cloud")

CHANNEL = "hm_pairing"
RECHECK_SECONDS = 2.0
RECHECK_ENV = "HALTON_METER_CLOUD_POLL_RECHECK_S"  # the fallback's period (tests set it long)


def recheck_seconds() -> float:
    """How often a waiting poll re-reads the database (``HALTON_METER_CLOUD_POLL_RECHECK_S``)."""
    raw = os.environ.get(RECHECK_ENV, "")
    try:
        value = float(raw) if raw else RECHECK_SECONDS
    except ValueError:
        return RECHECK_SECONDS
    return min(max(value, 0.1), 600.0)


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


def announce(engine: Engine, device_code_hash: str) -> None:
    """Tell every server process on this PostgreSQL database that a code changed (SQLite: nothing)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                     {"channel": CHANNEL, "payload": device_code_hash})


class PairingListener:
    """A thread that LISTENs on PostgreSQL and wakes this process's waiters.

    It reconnects after a failure (one log line, then every 2 s); while it is
    down the polls' database re-check answers instead.
    """

    def __init__(self, engine: Engine, waiters: PairingWaiters) -> None:
        url = engine.url.set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._waiters = waiters
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> None:
        """Start once, from the event loop whose waiters it wakes."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="hm-pairing-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _wake(self, payload: str) -> None:
        self._waiters.notify(payload)

    def _run(self) -> None:
        import psycopg

        assert self._loop is not None
        failed = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    failed = False
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=5.0):
                            if self._loop.is_closed():
                                return
                            self._loop.call_soon_threadsafe(self._wake, note.payload)
            except Exception as exc:  # noqa: BLE001 - the poll fallback covers the gap
                self.listening.clear()
                if not failed:
                    log.warning("pairing listener lost PostgreSQL (%s): polls re-check the "
                                "database until it reconnects", str(exc).strip().splitlines()[0:1])
                failed = True
                self._stop.wait(2.0)
            if self._loop.is_closed():
                return
