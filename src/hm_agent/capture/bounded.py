"""Bounded memory for JSON documents of any size.

A non-streamed body (or one oversized SSE event) is kept whole up to
`FULL_LIMIT` bytes, which covers every ordinary response. Past that only the
first `HEAD_LIMIT` bytes (where "model" sits) and the last `TAIL_LIMIT` bytes
(where every provider puts "usage"/"usageMetadata": after the output) are
kept, and the usage object is recovered from the tail with a raw JSON decode.
"""

from __future__ import annotations

import json
import re
from typing import Any

FULL_LIMIT = 4 * 1024 * 1024
HEAD_LIMIT = 64 * 1024
TAIL_LIMIT = 1024 * 1024

_decoder = json.JSONDecoder()


class BoundedBuffer:
    """Keeps a document whole while small, else its head and a rolling tail."""

    __slots__ = ("_parts", "_size", "_head", "_tail", "truncated", "total")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._head = b""
        self._tail = bytearray()
        self.truncated = False
        self.total = 0

    def append(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if not self.truncated:
            self._parts.append(data)
            self._size += len(data)
            if self._size <= FULL_LIMIT:
                return
            whole = b"".join(self._parts)
            self._parts = []
            self._head = whole[:HEAD_LIMIT]
            self._tail = bytearray(whole[-TAIL_LIMIT:])
            self.truncated = True
            return
        self._tail += data
        if len(self._tail) > 2 * TAIL_LIMIT:  # trim in batches, not per chunk
            del self._tail[:-TAIL_LIMIT]

    def whole(self) -> bytes | None:
        """The full document, or None when only head and tail were kept."""
        return None if self.truncated else b"".join(self._parts)

    def head(self) -> bytes:
        return self._head if self.truncated else b"".join(self._parts)[:HEAD_LIMIT]

    def tail(self) -> bytes:
        return bytes(self._tail[-TAIL_LIMIT:]) if self.truncated else b"".join(self._parts)


def _unescaped_quote_at(text: str, index: int) -> bool:
    """True when the quote at `index` is not escaped (even run of backslashes before it)."""
    backslashes = 0
    i = index - 1
    while i >= 0 and text[i] == "\\":
        backslashes += 1
        i -= 1
    return backslashes % 2 == 0


def last_object_for_key(document: bytes, key: str) -> dict[str, Any] | None:
    """The value of the last `"key": {...}` in a (possibly partial) JSON text.

    Occurrences inside strings are escaped (\\"key\\") and skipped; a value
    that does not decode as an object is skipped too.
    """
    text = document.decode("utf-8", "replace")
    pattern = re.compile(r'"' + re.escape(key) + r'"\s*:\s*\{')
    for match in reversed(list(pattern.finditer(text))):
        if not _unescaped_quote_at(text, match.start()):
            continue
        try:
            value, _ = _decoder.raw_decode(text, match.end() - 1)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def first_string_for_key(document: bytes, key: str) -> str | None:
    """The first `"key": "value"` string in a JSON prefix (the model name)."""
    text = document.decode("utf-8", "replace")
    pattern = re.compile(r'"' + re.escape(key) + r'"\s*:\s*"((?:[^"\\]|\\.){0,512})"')
    for match in pattern.finditer(text):
        if _unescaped_quote_at(text, match.start()):
            try:
                value = json.loads('"' + match.group(1) + '"')
            except ValueError:
                continue
            return value if isinstance(value, str) else None
    return None
