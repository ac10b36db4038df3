"""Incremental Content-Encoding decoders.

mitmproxy only decodes bodies it buffered: a streamed response reaches the tap
still gzip/br/zstd-encoded, one network chunk at a time. Each decoder here
takes encoded chunks and returns decoded bytes without holding the body.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Protocol


class ChunkDecoder(Protocol):
    def decode(self, chunk: bytes) -> bytes: ...


class DecodeError(Exception):
    """The body is not valid for its declared Content-Encoding (or inflates like a bomb)."""


# Decompression bombs: a few hundred bytes of brotli or a few KiB of zstd inflate to
# 256 MiB in one call, and an upstream may send megabytes of them, on the proxy thread.
# Each decoder works through its input in pieces small enough that one piece yields a
# bounded amount, and gives up (DecodeError: the call is proxied untouched, its usage
# flagged "unparsed") once the output passes both FLOOR bytes and RATIO times the input.
FLOOR = 64 * 1024 * 1024
RATIO = 200  # JSON and SSE inflate by 3-20x; a bomb by 1,000x (gzip) to 600,000x (brotli)
ZLIB_PIECE_OUT = 1024 * 1024  # zlib's max_length per call
ZSTD_PIECE_IN = 256  # zstd: at most ~32,000x per block, so a 256-byte piece gives <= ~8 MiB
BROTLI_PIECE_IN = 32  # brotli: one input byte can end a 16 MiB meta-block; 32 give <= ~48 MiB


class _Budget:
    """Counts a decoder's input and output, and refuses a bomb (see FLOOR and RATIO)."""

    def __init__(self) -> None:
        self._in = 0
        self._out = 0

    def _spend(self, encoded: int, decoded: int) -> None:
        self._in += encoded
        self._out += decoded
        if self._out > FLOOR and self._out > RATIO * self._in:
            raise DecodeError(f"inflates past {self._out:,} bytes from {self._in:,}: not decoded further")

    def _in_pieces(self, chunk: bytes, size: int, step: Callable[[bytes], bytes]) -> bytes:
        """``step`` (a decompressor's feed) over ``chunk`` ``size`` input bytes at a time, counted."""
        out: list[bytes] = []
        try:
            for at in range(0, len(chunk), size):
                piece = step(chunk[at:at + size])
                self._spend(min(size, len(chunk) - at), len(piece))
                out.append(piece)
        except DecodeError:
            raise
        except Exception as exc:  # the library's own error for a body that is not what it says
            raise DecodeError(str(exc)) from None
        return b"".join(out)


class _Identity:
    def decode(self, chunk: bytes) -> bytes:
        return chunk


class _Zlib(_Budget):
    """gzip (wbits 16+15), zlib-wrapped or raw deflate ("deflate" is both in the wild)."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._encoding = encoding
        self._obj: zlib._Decompress | None = None
        self._pending = b""

    def decode(self, chunk: bytes) -> bytes:
        if self._obj is None:
            self._pending += chunk
            if len(self._pending) < 2:
                return b""
            if self._encoding == "gzip":
                wbits = 31
            else:  # zlib header check: CMF/FLG multiple of 31 and CM=8
                head = self._pending[:2]
                wbits = 15 if (head[0] & 0x0F) == 8 and (head[0] << 8 | head[1]) % 31 == 0 else -15
            self._obj = zlib.decompressobj(wbits)
            chunk, self._pending = self._pending, b""
        out: list[bytes] = []
        data = chunk
        try:
            while data:
                piece = self._obj.decompress(data, ZLIB_PIECE_OUT)
                rest = self._obj.unconsumed_tail
                self._spend(len(data) - len(rest), len(piece))
                out.append(piece)
                if len(rest) == len(data) and not piece:
                    break  # nothing more can come out of it now
                data = rest
        except zlib.error as exc:
            raise DecodeError(str(exc)) from None
        return b"".join(out)


class _Brotli(_Budget):
    def __init__(self) -> None:
        import brotli

        super().__init__()
        self._obj = brotli.Decompressor()

    def decode(self, chunk: bytes) -> bytes:
        return self._in_pieces(chunk, BROTLI_PIECE_IN, self._obj.process)  # brotli.error: DecodeError


class _Zstd(_Budget):
    def __init__(self) -> None:
        import zstandard

        super().__init__()
        # read_across_frames: a server may flush several frames into one body
        self._obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def decode(self, chunk: bytes) -> bytes:
        return self._in_pieces(chunk, ZSTD_PIECE_IN, self._obj.decompress)  # ZstdError: DecodeError


class _Chain:
    def __init__(self, decoders: list[ChunkDecoder]) -> None:
        self._decoders = decoders

    def decode(self, chunk: bytes) -> bytes:
        for decoder in self._decoders:
            if not chunk:
                return b""
            chunk = decoder.decode(chunk)
        return chunk


def _one(encoding: str) -> ChunkDecoder:
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Zlib("gzip" if encoding != "deflate" else "deflate")
    if encoding == "br":
        return _Brotli()
    if encoding == "zstd":
        return _Zstd()
    if encoding in ("", "identity"):
        return _Identity()
    raise DecodeError(f"unsupported content-encoding {encoding!r}")


def decoder_for(content_encoding: str | None) -> ChunkDecoder:
    """A decoder for a Content-Encoding header value (codings are undone last-first)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return _Identity()
    if len(codings) == 1:
        return _one(codings[0])
    return _Chain([_one(c) for c in reversed(codings)])
