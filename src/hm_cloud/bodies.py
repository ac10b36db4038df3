"""Reading request bodies within a size limit, compressed or not.

The limit is checked on the declared length, on the bytes as they stream in,
and on the decompressed output, which is produced by a bounded streaming
decompressor: a small zstd or gzip bomb is cut off at the limit, never
inflated in full.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import AsyncIterator

import zstandard

from hm_proto.server import ApiError

MAX_BODY_BYTES = 4 * 1024 * 1024


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"Request body exceeds the limit of {limit} bytes ({limit // (1024 * 1024)} MiB): split the batch",
    )


async def read_limited(
    chunks: AsyncIterator[bytes], declared_length: str | None, limit: int = MAX_BODY_BYTES
) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit``."""
    if declared_length is not None:
        try:
            if int(declared_length) > limit:
                raise too_large(limit)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", "Content-Length is not a number") from exc
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_large(limit)
    return bytes(buf)


def decode_body(raw: bytes, content_encoding: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip, zstd) producing at most ``limit`` bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip"):
        decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = decomp.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ApiError(400, "invalid_request", "Body is not valid gzip data") from exc
        if len(out) > limit or decomp.unconsumed_tail:
            raise too_large(limit)
        if not decomp.eof:
            raise ApiError(400, "invalid_request", "Body is truncated gzip data")
        return out
    if encoding == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(raw), read_across_frames=True
        )
        try:
            out = reader.read(limit + 1)
        except zstandard.ZstdError as exc:
            raise ApiError(400, "invalid_request", "Body is not valid zstd data") from exc
        if len(out) > limit:
            raise too_large(limit)
        return out
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Encoding {encoding!r} is not supported: send identity, gzip or zstd",
    )
