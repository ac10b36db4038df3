"""Reading request bodies within a size limit, compressed or not.

Every request of every endpoint and form has a body limit
(:func:`body_limit`: 4 MiB for the batch upload, 8 KiB for everything else),
enforced by :class:`BodyLimitRouter` before any handler runs: a declared
``Content-Length`` above it is refused with 413 before a byte is read, and a
body without one (chunked) is counted as it streams in and cut off at the
limit. Handlers then read with :func:`read_limited`, and a compressed batch
is inflated by a bounded streaming decompressor: a small zstd or gzip bomb is
cut off at the limit, never inflated in full.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import zstandard
from starlette.routing import Router
from starlette.types import Message, Receive, Scope, Send

from hm_proto.server import ApiError

MAX_BODY_BYTES = 4 * 1024 * 1024  # POST /v1/requests/batch, on the wire and decompressed
MAX_SMALL_BODY_BYTES = 8 * 1024  # every other endpoint and form
BATCH_PATH = "/v1/requests/batch"


BODIES_PATH = "/v1/requests/bodies"  # opt-in request bodies (hm_cloud.request_bodies): 4 MiB too


def body_limit(path: str) -> int:
    """The largest body, in bytes, a request to ``path`` may carry."""
    return MAX_BODY_BYTES if path in (BATCH_PATH, BODIES_PATH) else MAX_SMALL_BODY_BYTES


def human_size(n: int) -> str:
    """``4 MiB``, ``8 KiB``, ``1.5 KiB``, ``100 bytes``: never ``0 MiB``."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def too_large(limit: int) -> ApiError:
    what = "split the batch" if limit == MAX_BODY_BYTES else "send a smaller body"
    return ApiError(
        413,
        "payload_too_large",
        f"Request body exceeds the limit of {limit} bytes ({human_size(limit)}): {what}",
    )


def declared_length(headers: Any) -> int | None:
    """The ``Content-Length`` of a request, None without one; 400 if it is not a number."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ApiError(400, "invalid_request", "Content-Length is not a number")
    return int(raw)


class BodyLimitRouter(Router):
    """The app's router, with the body limit of :func:`body_limit` on every request.

    It runs inside Starlette's exception middleware, so a refusal is answered
    by the app's own handlers (JSON for /v1, an error page for forms).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = body_limit(scope["path"])
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            length = declared_length(headers)
            if length is not None and length > limit:
                raise too_large(limit)
            receive = _counted(receive, limit)
        await super().__call__(scope, receive, send)


def _counted(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return counted


async def read_limited(
    chunks: AsyncIterator[bytes], content_length: str | None, limit: int = MAX_BODY_BYTES
) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit``."""
    declared = declared_length({} if content_length is None else {"content-length": content_length})
    if declared is not None and declared > limit:
        raise too_large(limit)
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
        if decomp.unused_data:
            # Bytes after the gzip member: garbage, or a second member we do
            # not read. Either way the body is not what the client meant.
            raise ApiError(
                400, "invalid_request", "Body has data after the end of the gzip stream: send one gzip member"
            )
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


def parse_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, "invalid_request", "Body is not valid JSON: send a JSON object"
        ) from exc
    if not isinstance(obj, dict):
        raise ApiError(400, "invalid_request", "Body must be a JSON object")
    return obj
