"""Guess and rate limits, and the bound on password hashing.

Two mechanisms, for two kinds of abuse:

* :func:`reserve` / :func:`release`: allowances ("10 wrong pairing codes per
  account in 10 minutes") counted in the database, so every server process
  sharing it sees the same counts and a restart forgets nothing. An attempt
  is *reserved* (counted) before the check it limits runs (argon2, a pairing
  code lookup), in one atomic transaction that also refuses it when the
  window is full; the caller releases the reservation when the attempt turns
  out not to count (the right password, a code that exists). So however many
  attempts arrive at once, in however many processes, no more than
  ``count`` of them can ever be checked within a window.

  Atomicity: SQLite runs the transaction under ``BEGIN IMMEDIATE`` (one
  writer at a time); PostgreSQL takes a transaction-scoped advisory lock per
  key, in key order (two reservations never deadlock), before counting.

* :class:`PasswordGate`: argon2 costs ~50 ms of CPU and memory per check, so
  a flood of logins must not take the threads and cores the API needs. The
  gate runs hashing on its own few threads at a lower CPU priority (never the
  shared worker threads that database calls use), admits a few concurrent hashes per
  client address and a bounded queue in all, and refuses the rest at once
  (429 for one address, 503 when the whole server is busy). It is per
  process: it bounds this process's resources, not an allowance.

Every limit of the backend is defined here (docs/security.md lists them).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, insert, select, text

from .db import limiter_slots
from .store import write_transaction

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` counted attempts per subject in any ``window`` seconds."""

    name: str
    count: int
    window: float

    def key(self, subject: str) -> str:
        """The stored key: the limit's name and a hash of the subject (no email or address kept)."""
        digest = hashlib.sha256(f"{self.name}\0{subject}".encode()).hexdigest()[:40]
        return f"{self.name[:23]}:{digest}"


# Wrong pairing codes (/connect?code= and POST /v1/pairing/approve), per
# signed-in account and per client address: 31^8 codes, 10 guesses.
CODE_GUESSES_PER_ACCOUNT = Limit("code-account", 10, 600.0)
CODE_GUESSES_PER_ADDRESS = Limit("code-address", 10, 600.0)
# Wrong passwords (unknown emails included), per account email and per client
# address. The address allowance is generous (one office, one NAT) but bounds
# credential stuffing across many accounts from one address.
LOGINS_PER_ACCOUNT = Limit("login-account", 10, 600.0)
LOGINS_PER_ADDRESS = Limit("login-address", 300, 600.0)
# POST /v1/pairing/start needs no account: every start counts, per address.
PAIRING_STARTS_PER_ADDRESS = Limit("start-address", 300, 600.0)
# Sign-up attempts per address (each hashes a password, and an attempt tells
# whether an email has an account: this bounds that enumeration).
SIGNUPS_PER_ADDRESS = Limit("signup-address", 20, 3600.0)
# Invitation links opened that are not live (unknown, used, revoked, expired),
# per address: the links carry 256 random bits, this keeps scanning loud.
INVITATION_GUESSES_PER_ADDRESS = Limit("invite-address", 30, 600.0)
# Invitation e-mails (with SMTP set): the server mails text an account chooses (its
# workspace name) to any address; per inviting account and per address.
INVITATION_EMAILS_PER_ACCOUNT = Limit("invite-mail-account", 20, 3600.0)
INVITATION_EMAILS_PER_ADDRESS = Limit("invite-mail-address", 20, 3600.0)
# GET /metrics with a wrong scrape key (HALTON_METER_CLOUD_METRICS_KEY is the operator's
# choice, perhaps a word), per address; addresses in ..._METRICS_ALLOW are not counted.
METRICS_KEY_GUESSES_PER_ADDRESS = Limit("metrics-address", 30, 600.0)
# GET /v1/usage: read keys that are not live (malformed, unknown, revoked), per
# address; and reads per live key (each can sum ten years of a workspace's
# rows: a dashboard polling every few seconds fits, a loop hammering it not).
READ_KEY_GUESSES_PER_ADDRESS = Limit("readkey-address", 30, 600.0)
USAGE_READS_PER_KEY = Limit("usage-key", 600, 600.0)

ALL_LIMITS = (
    CODE_GUESSES_PER_ACCOUNT,
    CODE_GUESSES_PER_ADDRESS,
    LOGINS_PER_ACCOUNT,
    LOGINS_PER_ADDRESS,
    PAIRING_STARTS_PER_ADDRESS,
    SIGNUPS_PER_ADDRESS,
    INVITATION_GUESSES_PER_ADDRESS,
    READ_KEY_GUESSES_PER_ADDRESS,
    USAGE_READS_PER_KEY,
    INVITATION_EMAILS_PER_ACCOUNT,
    INVITATION_EMAILS_PER_ADDRESS,
    METRICS_KEY_GUESSES_PER_ADDRESS,
)
LONGEST_WINDOW = max(limit.window for limit in ALL_LIMITS)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Counted attempts; :func:`release` them if the attempt must not count."""

    slot_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """The window is full: try again in ``retry_after`` seconds (≥ 1)."""

    limit: Limit
    retry_after: int


def reserve(
    engine: Engine, attempts: Sequence[tuple[Limit, str]], now: float
) -> Reservation | Refusal:
    """Count one attempt against every ``(limit, subject)``, or refuse if any is full.

    All or nothing: a refused attempt counts against none of them.
    """
    keyed = sorted({limit.key(subject): limit for limit, subject in attempts}.items())
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            for key, _limit in keyed:
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
                )
        # Housekeeping: no slot older than the longest window can matter.
        conn.execute(delete(limiter_slots).where(limiter_slots.c.at <= now - LONGEST_WINDOW))
        refusals: list[Refusal] = []
        for key, limit in keyed:
            times = (
                conn.execute(
                    select(limiter_slots.c.at)
                    .where(limiter_slots.c.key == key, limiter_slots.c.at > now - limit.window)
                    .order_by(limiter_slots.c.at)
                )
                .scalars()
                .all()
            )
            if len(times) >= limit.count:
                # Free again when enough of the oldest slots have aged out.
                frees_at = times[len(times) - limit.count] + limit.window
                refusals.append(Refusal(limit, max(1, math.ceil(frees_at - now))))
        if refusals:
            return max(refusals, key=lambda r: r.retry_after)
        ids = []
        for key, _limit in keyed:
            inserted = conn.execute(insert(limiter_slots).values(key=key, at=now)).inserted_primary_key
            assert inserted is not None
            ids.append(int(inserted[0]))
    return Reservation(tuple(ids))


def release(engine: Engine, reservation: Reservation) -> None:
    """Un-count a reserved attempt (it was not a wrong guess)."""
    if reservation.slot_ids:
        with write_transaction(engine) as conn:
            conn.execute(delete(limiter_slots).where(limiter_slots.c.id.in_(reservation.slot_ids)))


# -- password hashing ---------------------------------------------------------------------


class GateBusy(Exception):
    """The password gate refused a check; ``per_address`` says whose fault it is."""

    def __init__(self, per_address: bool) -> None:
        super().__init__("too many password checks in progress")
        self.per_address = per_address


def _default_concurrency() -> int:
    # Leave at least one core to the API: argon2 is CPU-bound.
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class PasswordGate:
    """Runs password hashing on a few threads of its own; refuses when too many wait.

        async with gate.admit(address):      # GateBusy at once if too many are pending
            ok = await gate.hash(verify_password, stored, typed)
    """

    concurrency: int = field(default_factory=_default_concurrency)
    per_address: int = 4  # requests admitted (hashing or waiting to) for one client address
    # Requests admitted in all: the last waits at most this many hash times (~0.1 s each).
    max_pending: int = 16
    _executor: ThreadPoolExecutor | None = None
    _pending: dict[str, int] = field(default_factory=dict)
    _total: int = 0

    @asynccontextmanager
    async def admit(self, address: str) -> AsyncIterator[None]:
        """Hold one of the gate's places for a request that will hash, or raise GateBusy."""
        if self._pending.get(address, 0) >= self.per_address:
            raise GateBusy(per_address=True)
        if self._total >= self.max_pending:
            raise GateBusy(per_address=False)
        self._pending[address] = self._pending.get(address, 0) + 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._pending[address] - 1
            if left:
                self._pending[address] = left
            else:
                del self._pending[address]

    async def hash(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (argon2 work) on the gate's own threads, at most ``concurrency`` at once.

        Not the shared worker threads that database calls run on, and at a
        lower CPU priority (nice +10, per thread on Linux, inherited by
        argon2's lane threads): requests keep the cores while logins hash.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.concurrency, thread_name_prefix="hm-argon2", initializer=_lower_priority
            )
        return await asyncio.wrap_future(self._executor.submit(fn, *args))


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass
