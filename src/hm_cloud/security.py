"""Passwords, signed session cookies, CSRF tokens and the pairing-guess limiter."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "hm_session"
SESSION_MAX_AGE = 14 * 24 * 3600

_hasher = PasswordHasher()
# Verifying against this keeps a login for an unknown email as slow as a real one.
_DUMMY_HASH = _hasher.hash(secrets.token_bytes(16).hex())


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass
class Session:
    """What the signed cookie carries: the signed-in user (if any) and the CSRF token."""

    user_id: int | None
    csrf: str
    fresh: bool = False  # True when no valid cookie came in: the response must set one
    epoch: int = 0  # the user's session epoch at sign-in; signing out bumps it (all cookies die)


class SessionCodec:
    """Signs and reads the session cookie (itsdangerous, timestamped)."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="hm-cloud-session")
        self._notes = URLSafeTimedSerializer(secret, salt="hm-cloud-note")

    def note(self, data: dict[str, str]) -> str:
        """A signed, URL-safe note for a redirect target (post/redirect/get results)."""
        return str(self._notes.dumps(data))

    def read_note(self, token: str | None, max_age: int = 3600) -> dict[str, str] | None:
        if not token or len(token) > 2048:
            return None
        try:
            data = self._notes.loads(token, max_age=max_age)
        except (BadSignature, ValueError):
            return None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return None
        return data

    def load(self, cookie: str | None) -> Session:
        if cookie:
            try:
                data = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE)
                uid = data.get("uid")
                csrf = data.get("csrf")
                epoch = data.get("ep", 0)
                if isinstance(csrf, str) and (uid is None or isinstance(uid, int)) and isinstance(epoch, int):
                    return Session(user_id=uid, csrf=csrf, epoch=epoch)
            except (BadSignature, AttributeError):
                pass
        return Session(user_id=None, csrf=secrets.token_bytes(24).hex(), fresh=True)

    def dump(self, session: Session) -> str:
        return str(
            self._serializer.dumps({"uid": session.user_id, "csrf": session.csrf, "ep": session.epoch})
        )


def csrf_ok(session: Session, presented: object) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(session.csrf, presented)


@dataclass
class GuessLimiter:
    """Counts wrong pairing codes per key (an account, a client address).

    In-process: each server process keeps its own counts, which for a
    multi-process deployment multiplies the allowance by the process count.
    """

    limit: int = 10
    window: float = 600.0
    _misses: dict[str, deque[float]] = field(default_factory=dict)

    def _trim(self, key: str, now: float) -> deque[float]:
        q = self._misses.get(key) or deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if q:
            self._misses[key] = q
        else:
            self._misses.pop(key, None)  # forget keys with no recent misses
        return q

    def retry_after(self, keys: list[str], now: float | None = None) -> int | None:
        """Seconds until a guess is allowed again, or None if allowed now."""
        now = time.monotonic() if now is None else now
        waits = []
        for key in keys:
            q = self._trim(key, now)
            if len(q) >= self.limit:
                waits.append(q[0] + self.window - now)
        return max(1, int(max(waits)) + 1) if waits else None

    def miss(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in keys:
            q = self._trim(key, now)
            q.append(now)
            self._misses[key] = q
