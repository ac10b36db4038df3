"""Batch upload bodies: throughput of BatchBuilder vs. the naive way.

100,000 realistic usage rows sit in an in-memory SQLite table shaped like the
daemon's store (``id``, ``ts``, ``row_json`` = ``UsageRow.to_json()``,
pre-serialized at capture). As the cloud worker does, each batch's 1,000 rows
are read fresh from the table (``(id, row_json)``, untimed), then the body is
built from them (timed). The baseline, measured in the same run on the same
rows, batch by batch: per-row dicts (``UsageRow.to_dict()``, made untimed)
-> ``json.dumps`` of the whole batch -> gzip level 6.

Prints rows/s and MB/s (of uncompressed JSON) per format (identity, gzip,
zstd), the wire size against the baseline's and against zstd level 1 with the
library's defaults, where the default format's time goes (join: the
uncompressed body; compress: that body; framing: the rest of a Batch: batch
id, row ids, limits), the ceiling (compressing alone against the baseline),
the figure of the older method (all 100,000 rows in one Python list, built
with ``build()``: the rows are cold in memory), and as the LAST line the
default format's rows/s against the baseline's, and the ratio.

``--explore`` adds the alternatives the issue asks about, each timed on the
same joined bodies: other zstd settings, a trained dictionary, zstd threads
(CPU and wall), and rows without their null attribution fields.

Timed in CPU seconds of this process (``process_time``: every thread
counts, so threads cannot make a figure look better than the CPU it costs);
best of R interleaved runs.
Run: ``python benchmarks/bench_batch.py [--rows N] [--repeats R] [--explore]``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import zstandard

from hm_proto import DEFAULT_ENCODING, BatchBuilder, ContentEncoding, EncodedRow, UsageRow
from hm_proto._batch import ZSTD_HASH_LOG, ZSTD_MIN_MATCH, _compress, _join

PER_BATCH = 1_000
BATCH_ID = "00000000-0000-4000-8000-000000000000"
ATTRIBUTION = ("project", "repo", "branch", "program", "os_user", "tags")

_MODELS = [
    ("anthropic", "claude-sonnet-4-5-20250929", "/v1/messages"),
    ("anthropic", "claude-haiku-4-5-20251001", "/v1/messages"),
    ("openai", "gpt-5-mini-2025-08-07", "/v1/chat/completions"),
    ("openai", "gpt-4.1-2025-04-14", "/v1/responses"),
    ("google", "gemini-2.5-pro", "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
    ("google", "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent"),
]


def realistic_rows(n: int, seed: int = 7) -> list[UsageRow]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        provider, model, endpoint = rnd.choice(_MODELS)
        cache_read = rnd.choice([None, 0, rnd.randrange(0, 60_000)])
        inp = rnd.randrange(50, 120_000) + (cache_read or 0)
        out = rnd.randrange(1, 8_000)
        priced = rnd.random() > 0.03
        rows.append(
            UsageRow(
                id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                ts=f"2026-11-{1 + i % 24:02d}T{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:"
                f"{rnd.randrange(60):02d}.{rnd.randrange(1000):03d}Z",
                provider=provider,
                model=model,
                endpoint=endpoint,
                status=rnd.choice([200] * 30 + [429, 500, 529]),
                stream=rnd.random() < 0.6,
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=cache_read,
                cache_write_tokens=rnd.choice([None, 0, rnd.randrange(0, 20_000)]),
                reasoning_tokens=rnd.choice([None, rnd.randrange(0, out + 1)]),
                cost_usd=f"{rnd.random() * 0.8:.6f}" if priced else None,
                price_version="0.0.61" if priced else "unpriced",
                latency_ms=rnd.randrange(200, 90_000),
                ttfb_ms=rnd.choice([None, rnd.randrange(100, 5_000)]),
            )
        )
    return rows


class Store:
    """The rows in an in-memory SQLite table, read a batch at a time like the daemon's store."""

    def __init__(self, rows: list[UsageRow], encode: Callable[[UsageRow], bytes] = UsageRow.to_json) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE requests (id TEXT PRIMARY KEY, ts TEXT NOT NULL, row_json BLOB NOT NULL)")
        self.db.executemany("INSERT INTO requests VALUES (?, ?, ?)", [(r.id, r.ts, encode(r)) for r in rows])
        self.batches = (len(rows) + PER_BATCH - 1) // PER_BATCH

    def fetch(self, batch: int) -> list[EncodedRow]:
        """Batch ``batch``'s rows as hm_agent.store.fetch_unsynced_after hands them over."""
        lo = batch * PER_BATCH + 1
        sql = "SELECT id, row_json FROM requests WHERE rowid >= ? AND rowid < ? ORDER BY rowid"
        return [(r[0], bytes(r[1])) for r in self.db.execute(sql, (lo, lo + PER_BATCH))]


#: One measured run: returns (CPU seconds, wall seconds, bytes produced).
Run = Callable[[], tuple[float, float, int]]


def per_batch(store: Store, prepare: Callable[[list[EncodedRow]], Any], work: Callable[[Any], int]) -> Run:
    """A run that reads each batch fresh and prepares it untimed, then times ``work`` on it."""

    def run() -> tuple[float, float, int]:
        cpu = wall = 0.0
        produced = 0
        for batch in range(store.batches):
            arg = prepare(store.fetch(batch))
            w0, c0 = time.perf_counter(), time.process_time()
            produced += work(arg)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
        return cpu, wall, produced

    return run


def whole(fn: Callable[[], int]) -> Run:
    def run() -> tuple[float, float, int]:
        w0, c0 = time.perf_counter(), time.process_time()
        produced = fn()
        return time.process_time() - c0, time.perf_counter() - w0, produced

    return run


def measure(runs: dict[str, Run], repeats: int) -> dict[str, tuple[float, float, int]]:
    """Best CPU seconds of each run (and its wall seconds, and the bytes it produced).

    Runs are interleaved, so load from other processes on the machine skews
    the baseline and the builder alike.
    """
    best = {name: (float("inf"), float("inf"), 0) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            cpu, wall, produced = run()
            if cpu < best[name][0]:
                best[name] = (cpu, wall, produced)
    return best


def baseline_work(dicts: list[dict[str, Any]]) -> int:
    body = {"batch_id": str(uuid.uuid4()), "rows": dicts}
    return len(gzip.compress(json.dumps(body).encode("utf-8"), compresslevel=6))


def dicts_of(usage_rows: list[UsageRow], slim: bool = False) -> Callable[[list[EncodedRow]], list[dict[str, Any]]]:
    """The baseline's input for a batch: its rows' ``to_dict()`` (json.loads of the stored
    bytes would make dicts that json.dumps serializes ~6 % slower: a weaker baseline)."""
    by_id = {r.id: r for r in usage_rows}

    def dicts(rows: list[EncodedRow]) -> list[dict[str, Any]]:
        out = [by_id[row_id].to_dict() for row_id, _ in rows]
        if slim:
            out = [{k: v for k, v in d.items() if v is not None or k not in ATTRIBUTION} for d in out]
        return out

    return dicts


def joined(rows: list[EncodedRow]) -> bytes:
    return _join(rows, BATCH_ID)


def slim_json(row: UsageRow) -> bytes:
    """The row without its null attribution fields (api.md: absent = null)."""
    d = {k: v for k, v in row.to_dict().items() if v is not None or k not in ATTRIBUTION}
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compress_with(compressor: zstandard.ZstdCompressor) -> Callable[[bytes], int]:
    return lambda raw: len(compressor.compress(raw))


def preallocated_join_compress(params: dict[str, int]) -> Callable[[list[EncodedRow]], int] | None:
    """Join into one reused buffer and compress into another (zstandard's private cffi
    module; python-zstandard's public API always allocates its output). None without cffi."""
    try:
        from zstandard import _cffi  # type: ignore[attr-defined]
    except ImportError:
        return None
    ffi, lib = _cffi.ffi, _cffi.lib
    cctx = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
    lib.ZSTD_CCtx_setParameter(cctx, lib.ZSTD_c_compressionLevel, 1)
    lib.ZSTD_CCtx_setParameter(cctx, lib.ZSTD_c_hashLog, params["hash_log"])
    lib.ZSTD_CCtx_setParameter(cctx, lib.ZSTD_c_minMatch, params["min_match"])
    src, cap = io.BytesIO(bytes(5 * 1024 * 1024)), 6 * 1024 * 1024
    dst = ffi.new("char[]", cap)
    head = b'{"batch_id":"' + BATCH_ID.encode() + b'","rows":['

    def run(rows_: list[EncodedRow]) -> int:
        src.seek(0)
        src.write(head)
        src.writelines(chain.from_iterable(zip(map(itemgetter(1), rows_), repeat(b","))))
        src.seek(-1, io.SEEK_CUR)
        src.write(b"]}")
        size = src.tell()
        with src.getbuffer() as view:
            n = lib.ZSTD_compress2(cctx, dst, cap, ffi.from_buffer(view), size)
        return len(bytes(ffi.buffer(dst, n)))

    return run


def explore_runs(store: Store, usage_rows: list[UsageRow]) -> dict[str, Run]:
    """Alternatives to the default, each compressing the same freshly joined bodies."""
    level1 = zstandard.ZstdCompressionParameters.from_level
    tuned = {"hash_log": ZSTD_HASH_LOG, "min_match": ZSTD_MIN_MATCH, "write_content_size": 1}  # the default
    samples = [r.to_json() for r in realistic_rows(min(len(usage_rows), 5_000), seed=99)]  # other rows
    runs: dict[str, Run] = {}
    for size in (16_384,):
        trained = zstandard.train_dictionary(size, samples)
        trained.precompute_compress(compression_params=level1(1, **tuned))
        comp = zstandard.ZstdCompressor(dict_data=trained, compression_params=level1(1, **tuned))
        runs[f"default + {size // 1024} KiB trained dictionary"] = per_batch(store, joined, compress_with(comp))
    variants: dict[str, dict[str, int]] = {
        "default, hash_log 12": {**tuned, "hash_log": 12},
        "default, hash_log 10": {**tuned, "hash_log": 10},
        "default, window_log 16": {**tuned, "window_log": 16},
        "default, target_length 1": {**tuned, "target_length": 1},
        "default, threads=2": {**tuned, "threads": 2},
    }
    for name, params in variants.items():
        comp = zstandard.ZstdCompressor(compression_params=level1(1, **params))
        runs[name] = per_batch(store, joined, compress_with(comp))
    for level in (-1, 3):  # 3: the library's default level (the dfast strategy)
        runs[f"zstd level {level}"] = per_batch(store, joined, compress_with(zstandard.ZstdCompressor(level=level)))
    comp = zstandard.ZstdCompressor(compression_params=level1(1, **tuned))
    runs["join + compress (the default's two steps)"] = per_batch(
        store, list, lambda rows_: len(comp.compress(_join(rows_, BATCH_ID))))
    prealloc = preallocated_join_compress(tuned)
    if prealloc is not None:
        runs["join + compress, preallocated in and out"] = per_batch(store, list, prealloc)
    # Threads across batches: every body at hand at once (held in memory, so cold).
    bodies = [joined(store.fetch(b)) for b in range(store.batches)]
    runs["all bodies at once, 1 thread"] = whole(lambda: comp.multi_compress_to_buffer(bodies, threads=1).size())
    runs["all bodies at once, threads=2"] = whole(lambda: comp.multi_compress_to_buffer(bodies, threads=2).size())
    slim_store = Store(usage_rows, slim_json)
    runs["slim rows: join + default zstd"] = per_batch(
        slim_store, list, lambda rows_: len(comp.compress(_join(rows_, BATCH_ID))))
    runs["slim rows: baseline"] = per_batch(slim_store, dicts_of(usage_rows, slim=True), baseline_work)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs; the best of each counts")
    parser.add_argument("--explore", action="store_true", help="also time the alternatives (settings, dictionary, threads, slim rows)")
    args = parser.parse_args()
    rows, repeats = max(PER_BATCH, args.rows // PER_BATCH * PER_BATCH), max(1, args.repeats)
    usage_rows = realistic_rows(rows)
    store = Store(usage_rows)
    raw_bytes = sum(len(r.to_json()) for r in usage_rows) + rows  # JSON bytes incl. commas, approx.
    entropy = os.urandom

    def built(encoding: ContentEncoding) -> Run:
        builder = BatchBuilder(encoding, max_rows=PER_BATCH)
        return per_batch(store, list, lambda rows_: len(builder.build_one(rows_, entropy).body))

    plain1 = zstandard.ZstdCompressor(level=1)
    codec_state: dict[str, object] = {}
    encodings: list[ContentEncoding] = [None, "gzip", "zstd"]
    runs: dict[str, Run] = {"baseline": per_batch(store, dicts_of(usage_rows), baseline_work)}
    runs |= {str(e): built(e) for e in encodings}
    runs |= {
        "join": per_batch(store, list, lambda rows_: len(joined(rows_))),
        "compress": per_batch(store, joined, lambda raw: len(_compress(raw, DEFAULT_ENCODING, codec_state))),
        "zstd level 1 defaults": per_batch(store, joined, compress_with(plain1)),
    }
    # The older method: every row in one Python list (cold in memory), build() splits it.
    stored = [(r.id, r.to_json()) for r in usage_rows]
    dicts = [r.to_dict() for r in usage_rows]
    list_builder = BatchBuilder(DEFAULT_ENCODING, max_rows=PER_BATCH)
    runs["list baseline"] = whole(lambda: sum(
        baseline_work(dicts[s : s + PER_BATCH]) for s in range(0, rows, PER_BATCH)))
    runs["list build"] = whole(lambda: sum(len(b.body) for b in list_builder.build(stored, entropy)))
    explored = explore_runs(store, usage_rows) if args.explore else {}
    runs |= explored

    print(f"{rows:,} rows, {PER_BATCH:,} per batch, {raw_bytes / 1e6:.1f} MB of row JSON, "
          "each batch read fresh from SQLite (untimed)")
    print(f"best of {repeats} interleaved runs, CPU time of this process")
    best = measure(runs, repeats)
    base_s, _, base_out = best["baseline"]
    base_rps = rows / base_s
    print(f"{'baseline dicts+json.dumps+gzip6':34s} {base_rps:>12,.0f} rows/s"
          f" {raw_bytes / base_s / 1e6:8.1f} MB/s  wire {base_out / 1e6:6.2f} MB")
    for encoding in encodings:
        secs, _, out = best[str(encoding)]
        name = f"BatchBuilder {encoding or 'identity'}"
        name += " (default)" if encoding == DEFAULT_ENCODING else ""
        print(f"{name:34s} {rows / secs:>12,.0f} rows/s {raw_bytes / secs / 1e6:8.1f} MB/s"
              f"  wire {out / 1e6:6.2f} MB  {rows / secs / base_rps:6.1f}x baseline")
    total_s, _, out = best[str(DEFAULT_ENCODING)]
    plain_s, _, plain_out = best["zstd level 1 defaults"]
    print(f"{DEFAULT_ENCODING} body: {out / 1e6:.2f} MB, x{out / base_out:.2f} the baseline's gzip 6 "
          f"and x{out / plain_out:.2f} zstd level 1 with library defaults "
          f"({plain_out / 1e6:.2f} MB, compressing at {raw_bytes / plain_s / 1e6:.0f} MB/s)")
    join_s, comp_s = best["join"][0], best["compress"][0]
    framing_s = max(0.0, total_s - join_s - comp_s)
    print(f"where {DEFAULT_ENCODING} time goes: join {join_s * 1e3:.1f} ms ({raw_bytes / join_s / 1e6:.0f} MB/s), "
          f"compress {comp_s * 1e3:.1f} ms ({raw_bytes / comp_s / 1e6:.0f} MB/s), framing {framing_s * 1e3:.1f} ms")
    print(f"ceiling: compressing alone would be x{base_s / comp_s:.1f} the baseline, "
          f"join + compress x{base_s / (join_s + comp_s):.1f}")
    list_base, list_build = best["list baseline"][0], best["list build"][0]
    print(f"older method (all rows in one list, cold in memory; build()): {rows / list_build:,.0f} vs "
          f"{rows / list_base:,.0f} rows/s, x{list_base / list_build:.1f}")
    for name in explored:
        if name.startswith("slim rows: baseline"):
            continue
        secs, wall, size = best[name]
        ref = best["slim rows: baseline"][0] if name.startswith("slim") else base_s
        print(f"  explore {name:42s} CPU {secs * 1e3:6.1f} ms  wall {wall * 1e3:6.1f} ms  "
              f"wire {size / 1e6:6.2f} MB  x{ref / secs:.1f} its baseline")
    if explored:
        slim_base = best["slim rows: baseline"]
        print(f"  explore {'slim rows: baseline':42s} CPU {slim_base[0] * 1e3:6.1f} ms  "
              f"wire {slim_base[2] / 1e6:6.2f} MB")
    rps = rows / total_s
    print(f"BatchBuilder {DEFAULT_ENCODING} vs json.dumps+gzip6: {rps:,.0f} vs {base_rps:,.0f} rows/s, "
          f"x{rps / base_rps:.1f}")


if __name__ == "__main__":
    main()
