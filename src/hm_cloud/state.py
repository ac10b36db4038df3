"""What every request handler shares: the engine, settings and in-process helpers."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import Engine
from starlette.requests import Request

from . import limits
from . import waiters as wakeups
from .limits import Limit, PasswordGate, Refusal, Reservation
from .security import SessionCodec
from .waiters import PairingListener, PairingWaiters

T = TypeVar("T")

CODE_TTL_SECONDS = 600
POLL_INTERVAL_SECONDS = 5
SLOW_DOWN_STEP_SECONDS = 5
LONG_POLL_DEFAULT_SECONDS = 20.0
LONG_POLL_MAX_SECONDS = 20.0
MAX_BATCH_ROWS = 1000


@dataclass
class CloudState:
    engine: Engine
    app_url: str
    sessions: SessionCodec
    # Guess and rate limits are counted in the database (limits.reserve); only
    # the bound on concurrent password hashing is per process.
    password_gate: PasswordGate = field(default_factory=PasswordGate)
    waiters: PairingWaiters = field(default_factory=PairingWaiters)
    listener: PairingListener | None = None  # PostgreSQL: wakes polls for other processes' changes

    async def listen_for_pairings(self) -> None:
        """Start this process's LISTEN thread on PostgreSQL (once), and give it a second to
        connect, so a change made right after this poll's first look is not missed."""
        if self.engine.dialect.name != "postgresql":
            return
        if self.listener is None:
            self.listener = PairingListener(self.engine, self.waiters)
            self.listener.start()
        if not self.listener.listening.is_set():
            await anyio.to_thread.run_sync(self.listener.listening.wait, 1.0)

    async def pairing_changed(self, device_code_hash: str) -> None:
        """Wake the polls waiting on this code, in this process and (PostgreSQL) every other."""
        self.waiters.notify(device_code_hash)
        await self.db(wakeups.announce, device_code_hash)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store function in a worker thread: the event loop never waits on the DB."""
        return await anyio.to_thread.run_sync(functools.partial(fn, self.engine, *args, **kwargs))

    async def reserve(self, attempts: Sequence[tuple[Limit, str]]) -> Reservation | Refusal:
        """Count an attempt against ``attempts`` before checking it (see limits.reserve)."""
        return await self.db(limits.reserve, attempts, time.time())

    async def release(self, reservation: Reservation) -> None:
        """The attempt was not a wrong guess: un-count it."""
        await self.db(limits.release, reservation)


def cloud(request: Request) -> CloudState:
    state: CloudState = request.app.state.cloud
    return state


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
