"""Passwords, signed session cookies and CSRF tokens (the limits are in limits.py)."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

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
    fresh: bool = False  # True when no valid cookie came in: a GET's response sets one
    changed: bool = False  # signed in or out by this request (CSRF checked): the response sets it
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
    # compare_digest raises TypeError on non-ASCII str: compare bytes (never a 500).
    return isinstance(presented, str) and hmac.compare_digest(
        session.csrf.encode(), presented.encode("utf-8", "replace")
    )
