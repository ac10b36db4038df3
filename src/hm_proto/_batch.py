"""Upload bodies for ``POST /v1/requests/batch``, built from stored rows.

The store keeps every row's api.md JSON exactly as it will be uploaded
(``UsageRow.to_json()`` in the ``row_json`` column), so a body is a byte
join: no row is decoded or re-encoded on the hot path. An ``EncodedRow`` is the
pair ``(row_id, row_json)``.

Limits come from api.md: at most 1,000 rows and 4 MiB of uncompressed JSON
per batch. :meth:`BatchBuilder.build` splits longer inputs; a single row that
alone exceeds the byte limit can never be sent, so it raises
:class:`RowTooLarge` (``SyncSession`` turns that into a quarantine event)
instead of looping.

Body compression is chosen per builder. ``zstd`` is the default: in
``benchmarks/bench_batch.py`` it builds bodies at several times the speed of
gzip at a smaller size (see docs/sync.md for the figures). The codecs are
imported lazily so ``import hm_proto`` stays light.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from itertools import accumulate
from operator import itemgetter
from typing import Any, Literal

from ._codes import Entropy
from ._errors import LocalProtocolError
from ._http import Headers, Request, bearer

#: One stored row as the upload needs it: ``(row_id, row_json)``. (Not hm_agent.store.StoredRow,
#: the daemon's full table row.)
EncodedRow = tuple[str, bytes]
ContentEncoding = Literal["gzip", "zstd"] | None

MAX_BATCH_ROWS = 1_000
MAX_BATCH_BYTES = 4 * 1024 * 1024
BATCH_TARGET = "/v1/requests/batch"
DEFAULT_ENCODING: ContentEncoding = "zstd"
ZSTD_LEVEL = 1  # faster than 3 and, on row JSON, smaller too (bench_batch.py)
ZSTD_HASH_LOG = 11  # 12: 3-6 % slower for a 0.8 % smaller body; 10: 3 % bigger, no faster
ZSTD_MIN_MATCH = 7
GZIP_LEVEL = 1

_UUID_LEN = 36
_BODY_HEAD = b'{"batch_id":"'
_BODY_MID = b'","rows":['
_BODY_TAIL = b"]}"
# C-level getters: the hot path touches each row without a Python-level loop.
_id_of = itemgetter(0)
_json_of = itemgetter(1)
#: Bytes of a body beyond its rows and the commas between them.
ENVELOPE_BYTES = len(_BODY_HEAD) + _UUID_LEN + len(_BODY_MID) + len(_BODY_TAIL)


class RowTooLarge(LocalProtocolError):
    """A stored row is bigger than a whole batch may be: it can never be sent."""

    def __init__(self, row_id: str, size: int, limit: int) -> None:
        super().__init__(
            f"row {row_id} is {size} bytes of JSON; with the batch envelope it exceeds the "
            f"{limit}-byte batch limit and cannot be uploaded. It stays in the local store."
        )
        self.row_id = row_id
        self.size = size
        self.limit = limit


def new_batch_id(entropy: Entropy) -> str:
    """A random (version 4) UUID string from 16 bytes of ``entropy``."""
    raw = bytearray(entropy(16))
    if len(raw) != 16:
        raise LocalProtocolError(f"entropy(16) returned {len(raw)} bytes")
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _compress(body: bytes, encoding: ContentEncoding, state: dict[str, Any]) -> bytes:
    if encoding is None:
        return body
    if encoding == "gzip":
        import zlib

        # wbits 31 = gzip container (RFC 1952), what Content-Encoding: gzip means.
        comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        return comp.compress(body) + comp.flush()
    if encoding == "zstd":
        compressor = state.get("zstd")
        if compressor is None:
            import zstandard

            # write_content_size lets the server size its buffer and refuse
            # oversized bodies before decompressing them (no checksum: TCP/TLS
            # already guard the bytes). A 2 Ki-entry hash table and 7-byte
            # matches suit row JSON (many repeated keys): faster than level 1's
            # defaults for the same body size (bench_batch.py --explore).
            params = zstandard.ZstdCompressionParameters.from_level(
                ZSTD_LEVEL, hash_log=ZSTD_HASH_LOG, min_match=ZSTD_MIN_MATCH, write_content_size=1
            )
            compressor = zstandard.ZstdCompressor(compression_params=params)
            state["zstd"] = compressor
        return bytes(compressor.compress(body))
    raise LocalProtocolError(f"unknown content encoding {encoding!r}: use None, 'gzip' or 'zstd'")


def _join(rows: Sequence[EncodedRow], batch_id: str) -> bytes:
    """The uncompressed body, copying the rows' bytes once: the envelope is
    glued to the first and last row instead of joined around the whole."""
    parts = list(map(_json_of, rows))
    head = b"".join((_BODY_HEAD, batch_id.encode("ascii"), _BODY_MID))
    if len(parts) == 1:
        return b"".join((head, parts[0], _BODY_TAIL))
    parts[0] = head + parts[0]
    parts[-1] = parts[-1] + _BODY_TAIL
    return b",".join(parts)


def _zstd_available() -> bool:
    return find_spec("zstandard") is not None


@dataclass(frozen=True, slots=True)
class Batch:
    """One upload: ``body`` is what goes on the wire (compressed if encoded)."""

    batch_id: str
    row_ids: tuple[str, ...]
    body: bytes
    content_encoding: ContentEncoding
    raw_size: int  # bytes of uncompressed JSON: what the 4 MiB limit counts

    def __len__(self) -> int:
        return len(self.row_ids)

    def headers(self, token: str) -> Headers:
        headers: Headers = (
            bearer(token),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        )
        if self.content_encoding is not None:
            headers += (("Content-Encoding", self.content_encoding),)
        return headers

    def to_request(self, token: str) -> Request:
        """``POST /v1/requests/batch`` with this body, authenticated by ``token``."""
        return Request("POST", BATCH_TARGET, self.headers(token), self.body)


class BatchBuilder:
    """Turns stored rows into :class:`Batch` objects within the api.md limits."""

    def __init__(
        self,
        encoding: ContentEncoding | Literal["auto"] = "auto",
        *,
        max_rows: int = MAX_BATCH_ROWS,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        """``encoding="auto"``: zstd when ``zstandard`` is installed (the ``[zstd]``
        extra), else gzip (stdlib). An explicit ``"zstd"`` without it is an error."""
        if encoding == "auto":
            encoding = DEFAULT_ENCODING if _zstd_available() else "gzip"
        elif encoding == "zstd" and not _zstd_available():
            raise LocalProtocolError(
                "zstd bodies need the zstandard package: pip install "
                "'halton-meter-proto[zstd]', or use encoding='gzip'"
            )
        if encoding not in (None, "gzip", "zstd"):
            raise LocalProtocolError(
                f"unknown content encoding {encoding!r}: use None, 'gzip' or 'zstd'"
            )
        if not 1 <= max_rows <= MAX_BATCH_ROWS:
            raise LocalProtocolError(f"max_rows must be 1..{MAX_BATCH_ROWS}, got {max_rows}")
        if not ENVELOPE_BYTES < max_bytes <= MAX_BATCH_BYTES:
            raise LocalProtocolError(f"max_bytes must be {ENVELOPE_BYTES + 1}..{MAX_BATCH_BYTES}")
        self.encoding: ContentEncoding = encoding
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._codec_state: dict[str, Any] = {}

    def fit(self, rows: Sequence[EncodedRow], start: int = 0, max_rows: int | None = None) -> int:
        """End index of the longest run ``rows[start:end]`` that fits one batch.

        Raises :class:`RowTooLarge` when ``rows[start]`` alone does not fit.
        ``max_rows`` lowers the row limit for this call (a split batch).
        """
        limit_rows = self.max_rows if max_rows is None else min(max_rows, self.max_rows)
        stop = min(len(rows), start + limit_rows)
        if start >= stop:
            return start
        # Fast path, one C-level pass: the whole run fits (the usual case).
        run = rows[start:stop]
        budget = self.max_bytes - ENVELOPE_BYTES + 1  # the first row has no comma
        if sum(map(len, map(_json_of, run))) + len(run) <= budget:  # +1 a row: its comma
            return stop
        sizes = [len(row_json) + 1 for _, row_json in run]
        end = start + bisect_right(list(accumulate(sizes)), budget)
        if end == start:
            row_id, row_json = rows[start]
            raise RowTooLarge(row_id, len(row_json), self.max_bytes)
        return end

    def build_one(self, rows: Sequence[EncodedRow], entropy: Entropy) -> Batch:
        """One batch of exactly ``rows``; they must fit (see :meth:`fit`)."""
        if not rows:
            raise LocalProtocolError("a batch needs at least one row")
        batch_id = new_batch_id(entropy)
        raw = _join(rows, batch_id) if len(rows) <= self.max_rows else b""
        if not raw or len(raw) > self.max_bytes:
            self.fit(rows)  # RowTooLarge when the first row alone is too big
            raise LocalProtocolError(
                f"{len(rows)} rows do not fit one batch ({self.max_rows} rows, "
                f"{self.max_bytes} bytes): use build() to split them"
            )
        return self._batch(rows, batch_id, raw)

    def _batch(self, rows: Sequence[EncodedRow], batch_id: str, raw: bytes) -> Batch:
        return Batch(
            batch_id=batch_id,
            row_ids=tuple(map(_id_of, rows)),
            body=_compress(raw, self.encoding, self._codec_state),
            content_encoding=self.encoding,
            raw_size=len(raw),
        )

    def build(self, rows: Sequence[EncodedRow], entropy: Entropy) -> list[Batch]:
        """All ``rows`` as consecutive batches, in order.

        Raises :class:`RowTooLarge` on the first row that can never fit; use
        :meth:`fit` directly to skip such rows instead.
        """
        batches: list[Batch] = []
        start = 0
        while start < len(rows):
            stop = min(len(rows), start + self.max_rows)
            batch_id = new_batch_id(entropy)
            # The body is joined anyway, and its length is the byte check: sizes
            # are summed only for the rare run that is over the limit.
            raw = _join(rows[start:stop], batch_id)
            if len(raw) > self.max_bytes:
                stop = self.fit(rows, start)
                raw = _join(rows[start:stop], batch_id)
            batches.append(self._batch(rows[start:stop], batch_id, raw))
            start = stop
        return batches
