"""Incremental Content-Encoding decoders.

mitmproxy only decodes bodies it buffered: a streamed response reaches the tap
still gzip/br/zstd-encoded, one network chunk at a time. Each decoder here
takes encoded chunks and returns decoded bytes without holding the body.
"""

from __future__ import annotations

import zlib
from typing import Protocol


class ChunkDecoder(Protocol):
    def decode(self, chunk: bytes) -> bytes: ...


class DecodeError(Exception):
    """The body is not valid for its declared Content-Encoding."""


class _Identity:
    def decode(self, chunk: bytes) -> bytes:
        return chunk


class _Zlib:
    """gzip (wbits 16+15), zlib-wrapped or raw deflate ("deflate" is both in the wild)."""

    def __init__(self, encoding: str) -> None:
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
        try:
            return self._obj.decompress(chunk)
        except zlib.error as exc:
            raise DecodeError(str(exc)) from None


class _Brotli:
    def __init__(self) -> None:
        import brotli

        self._obj = brotli.Decompressor()

    def decode(self, chunk: bytes) -> bytes:
        try:
            return bytes(self._obj.process(chunk))
        except Exception as exc:  # brotli.error
            raise DecodeError(str(exc)) from None


class _Zstd:
    def __init__(self) -> None:
        import zstandard

        # read_across_frames: a server may flush several frames into one body
        self._obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def decode(self, chunk: bytes) -> bytes:
        try:
            return bytes(self._obj.decompress(chunk))
        except Exception as exc:  # zstandard.ZstdError
            raise DecodeError(str(exc)) from None


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
