"""What every request handler shares: the engine, settings and in-process helpers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import Engine
from starlette.requests import Request

from .security import GuessLimiter, SessionCodec
from .waiters import PairingWaiters

T = TypeVar("T")

CODE_TTL_SECONDS = 600
POLL_INTERVAL_SECONDS = 5
SLOW_DOWN_STEP_SECONDS = 5
LONG_POLL_DEFAULT_SECONDS = 20.0
LONG_POLL_MAX_SECONDS = 20.0
# How often a waiting poll re-reads the database, for approvals that landed in
# another server process (the in-process event answers at once).
LONG_POLL_RECHECK_SECONDS = 2.0
MAX_BATCH_ROWS = 1000


@dataclass
class CloudState:
    engine: Engine
    app_url: str
    sessions: SessionCodec
    limiter: GuessLimiter = field(default_factory=GuessLimiter)  # wrong pairing codes
    # Wrong passwords, per account email (not per address: one office, one NAT).
    login_limiter: GuessLimiter = field(default_factory=GuessLimiter)
    # Pairing starts per client address: /v1/pairing/start needs no account, so
    # bound the rows a single address can make (generous: one office, one NAT).
    start_limiter: GuessLimiter = field(default_factory=lambda: GuessLimiter(limit=300, window=600.0))
    waiters: PairingWaiters = field(default_factory=PairingWaiters)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store function in a worker thread: the event loop never waits on the DB."""
        return await anyio.to_thread.run_sync(functools.partial(fn, self.engine, *args, **kwargs))


def cloud(request: Request) -> CloudState:
    state: CloudState = request.app.state.cloud
    return state


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
