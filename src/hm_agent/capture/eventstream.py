"""AWS event stream framing (`application/vnd.amazon.eventstream`), as Bedrock's
ConverseStream and InvokeModelWithResponseStream send it.

Each message: total length (4), headers length (4), prelude CRC32 (4),
headers, payload, message CRC32 (4). Bytes are buffered only until a whole
message is there; a message larger than MAX_MESSAGE or a bad CRC raises
EventStreamError (the tap then flags the row `unparsed`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

MAX_MESSAGE = 16 * 1024 * 1024
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # header value type -> fixed size


class EventStreamError(ValueError):
    pass


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(raw):
        n = raw[i]
        name = raw[i + 1:i + 1 + n].decode("utf-8", "replace")
        i += 1 + n
        kind = raw[i]
        i += 1
        if kind in (6, 7):  # bytes, string: 2-byte length
            size = int.from_bytes(raw[i:i + 2], "big")
            value = raw[i + 2:i + 2 + size]
            i += 2 + size
            if kind == 7:
                out[name] = value.decode("utf-8", "replace")
        elif kind in _FIXED:
            i += _FIXED[kind]
        else:
            raise EventStreamError(f"unknown header value type {kind}")
    return out


class EventStreamSplitter:
    """Bytes in, (event type, payload) out, one per whole message."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[str | None, bytes]]:
        self._buf += data
        while len(self._buf) >= 12:
            total = int.from_bytes(self._buf[0:4], "big")
            header_len = int.from_bytes(self._buf[4:8], "big")
            if total > MAX_MESSAGE or total < 16 or header_len > total - 16:
                raise EventStreamError(f"bad event stream message length {total}")
            if zlib.crc32(self._buf[0:8]) != int.from_bytes(self._buf[8:12], "big"):
                raise EventStreamError("bad event stream prelude CRC")
            if len(self._buf) < total:
                return
            message = bytes(self._buf[:total])
            del self._buf[:total]
            if zlib.crc32(message[:-4]) != int.from_bytes(message[-4:], "big"):
                raise EventStreamError("bad event stream message CRC")
            headers = _headers(message[12:12 + header_len])
            name = headers.get(":event-type") or headers.get(":exception-type")
            yield name, message[12 + header_len:-4]


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message with string headers (the fake Bedrock upstream in the tests uses this)."""
    raw = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + len(v.encode()).to_bytes(2, "big") + v.encode()
                   for k, v in headers.items())
    total = 12 + len(raw) + len(payload) + 4
    prelude = total.to_bytes(4, "big") + len(raw).to_bytes(4, "big")
    head = prelude + zlib.crc32(prelude).to_bytes(4, "big") + raw + payload
    return head + zlib.crc32(head).to_bytes(4, "big")
