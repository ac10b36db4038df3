"""Pairing codes, device codes and sync tokens.

Entropy is a parameter: every generator takes ``entropy``, a callable that
returns *n* random bytes (``secrets.token_bytes`` in production, a seeded
source in tests). Nothing here reads a clock or the OS random source.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from collections.abc import Callable

from ._errors import LocalProtocolError

Entropy = Callable[[int], bytes]

#: 31 symbols: digits 2-9 and A-Z without I, L and O, so no 0/O, 1/I/l confusion.
USER_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
USER_CODE_LENGTH = 8
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TOKEN_PREFIX = "hm_sync_"
#: Read-only workspace API keys (GET /v1/usage): the same shape as sync tokens.
READ_KEY_PREFIX = "hm_read_"
TOKEN_RANDOM_CHARS = 30  # 30 * log2(62) = 178.6 bits
TOKEN_CHECKSUM_CHARS = 6  # 62**6 > 2**32
TOKEN_LENGTH = len(TOKEN_PREFIX) + TOKEN_RANDOM_CHARS + TOKEN_CHECKSUM_CHARS
DEVICE_CODE_BYTES = 32  # 256 bits, api.md asks for >= 160


def _uniform_symbols(entropy: Entropy, alphabet: str, count: int) -> str:
    """``count`` symbols drawn uniformly from ``alphabet`` by rejection sampling."""
    n = len(alphabet)
    limit = 256 - (256 % n)  # bytes at or above this would bias the modulo
    out: list[str] = []
    while len(out) < count:
        for b in entropy(count * 2):
            if b < limit:
                out.append(alphabet[b % n])
                if len(out) == count:
                    break
    return "".join(out)


# -- user codes ---------------------------------------------------------------


def generate_user_code(entropy: Entropy) -> str:
    """A fresh user code in canonical form (8 symbols, no dash)."""
    return _uniform_symbols(entropy, USER_CODE_ALPHABET, USER_CODE_LENGTH)


def format_user_code(code: str) -> str:
    """Display form: two groups of four, ``WXJ4-9KLM``."""
    canon = normalize_user_code(code)
    if canon is None:
        raise LocalProtocolError(f"not a pairing code: {code!r}")
    return f"{canon[:4]}-{canon[4:]}"


def normalize_user_code(text: str) -> str | None:
    """Canonical form of what a person typed, or None if it cannot be a code.

    Case-insensitive, the dash (and spaces) optional.
    """
    canon = "".join(ch for ch in text.strip().upper() if ch not in "- ")
    if len(canon) != USER_CODE_LENGTH:
        return None
    if any(ch not in USER_CODE_ALPHABET for ch in canon):
        return None
    return canon


# -- device codes ---------------------------------------------------------------


def generate_device_code(entropy: Entropy) -> str:
    """An opaque secret the daemon polls with (256 bits, URL-safe)."""
    raw = entropy(DEVICE_CODE_BYTES)
    if len(raw) != DEVICE_CODE_BYTES:
        raise LocalProtocolError("entropy source returned the wrong number of bytes")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# -- sync tokens ---------------------------------------------------------------


def _base62(n: int, width: int) -> str:
    chars: list[str] = []
    while n:
        n, r = divmod(n, 62)
        chars.append(BASE62[r])
    s = "".join(reversed(chars)) or "0"
    return s.rjust(width, "0")


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), TOKEN_CHECKSUM_CHARS)


def generate_token(entropy: Entropy, prefix: str = TOKEN_PREFIX) -> str:
    """A new ``hm_sync_…`` token (or ``hm_read_…`` key with ``prefix=READ_KEY_PREFIX``):
    prefix, 30 base62 random chars, 6-char CRC32."""
    random_part = _uniform_symbols(entropy, BASE62, TOKEN_RANDOM_CHARS)
    return prefix + random_part + _checksum(random_part)


def looks_like_token(text: str, prefix: str = TOKEN_PREFIX) -> bool:
    """True if ``text`` has the token's shape (with ``prefix``) and a valid checksum (no server needed)."""
    if len(text) != len(prefix) + TOKEN_RANDOM_CHARS + TOKEN_CHECKSUM_CHARS or not text.startswith(prefix):
        return False
    body = text[len(prefix) :]
    if any(ch not in BASE62 for ch in body):
        return False
    random_part, check = body[:TOKEN_RANDOM_CHARS], body[TOKEN_RANDOM_CHARS:]
    return hmac.compare_digest(_checksum(random_part), check)


def hash_token(token: str) -> str:
    """SHA-256 hex digest: the only form of a token the backend stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    return hmac.compare_digest(hash_token(token), stored_hash)
