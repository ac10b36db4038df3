"""The spill file: rows the daemon could not write to db.sqlite before it exited.

When the database stays unwritable at shutdown (a full disk, an I/O error, a
lock held past the drain timeout), the writer appends every row still in
memory to ``unwritten-rows.jsonl`` in the home (0600, one JSON object per
line, fsynced), or, if that fails too, to the same name in the private
runtime directory (``home.runtime_dir``). The next start replays both files
into the database (``INSERT OR IGNORE`` by id: replaying twice never
duplicates a row) and deletes them once every row is committed.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from .home import fsync_dir
from .store import StoredRow

log = logging.getLogger("hm_agent.spill")

SPILL_NAME = "unwritten-rows.jsonl"
# A spilled line is one row: far below this unless the file was tampered with.
MAX_LINE = 256 * 1024

_FIELDS = tuple(f.name for f in fields(StoredRow))
_STR = {"id", "ts", "provider", "model", "host", "endpoint", "price_version", "flags"}
_INT = {"status", "latency_ms"}
_OPT_INT = {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "reasoning_tokens", "ttfb_ms"}


def _line(row: StoredRow) -> bytes:
    data: dict[str, Any] = {name: getattr(row, name) for name in _FIELDS}
    data["row_json"] = row.row_json.decode("utf-8", "replace")
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def write_spill(rows: Sequence[StoredRow], candidates: Sequence[Path]) -> Path | None:
    """Append ``rows`` to the first candidate that takes all of them; None if none did."""
    if not rows:
        return None
    payload = b"".join(_line(r) for r in rows)
    for path in candidates:
        try:
            _append(path, payload)
        except OSError as exc:
            log.error("could not keep %d unwritten rows in %s: %s", len(rows), path, exc)
            continue
        return path
    return None


def _append(path: Path, payload: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:  # leave the file as it was: no half line for the replay to skip
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _row(data: Any) -> StoredRow | None:
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        return None
    for name in _STR:
        if not isinstance(data[name], str):
            return None
    for name in _INT | _OPT_INT:
        value = data[name]
        if value is None and name in _OPT_INT:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
            return None
    if not isinstance(data["stream"], bool) or not isinstance(data["row_json"], str):
        return None
    for name in set(_FIELDS) - _STR - _INT - _OPT_INT - {"stream", "row_json"}:
        if data[name] is not None and not isinstance(data[name], str):  # cost_usd, attribution
            return None
    return StoredRow(**{**data, "row_json": data["row_json"].encode()})


def read_spill(path: Path) -> Iterator[StoredRow]:
    """The rows of a spill file; lines that are not a well-formed row are skipped (and logged)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise OSError(f"{path} is not a regular file of ours; not replaying it")
    skipped = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        while True:
            line = fh.readline(MAX_LINE + 1)
            if not line:
                break
            if len(line) > MAX_LINE and not line.endswith(b"\n"):
                while (rest := fh.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of an overlong line, a bounded piece at a time
                skipped += 1
                continue
            try:
                row = _row(json.loads(line))
            except ValueError:
                row = None
            if row is None:
                skipped += 1
                continue
            yield row
    if skipped:
        log.warning("%s: skipped %d lines that are not rows", path, skipped)


def remove_spill(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
