"""The writer thread: captured calls in (never blocking the proxy), rows out.

The proxy thread calls :meth:`RowWriter.submit`, which only appends to an
in-memory queue. This thread prices each call (prices are looked up here,
not on the proxy thread), builds the api.md Row, and inserts batches in short
``BEGIN IMMEDIATE`` transactions. A locked or slow database only makes the
queue longer; :meth:`RowWriter.stop` drains it before the daemon exits.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hm_proto import UsageRow

from .attribution import Attributed, attribute
from .store import Store, StoredRow

log = logging.getLogger("hm_agent.writer")

# Past this many rows waiting in memory (the database has been unwritable for
# a long time) new calls are counted as dropped rather than growing memory
# without bound; status reports the count.
MAX_PENDING = 200_000
BATCH_MAX = 500
# After the first call of a batch arrives, wait this long for more: one wake-up
# and one transaction per interval instead of per call keeps the writer from
# taking the GIL away from the proxy thread on every request (a row costs
# ~140 us alone, ~22 us in a batch of 50). Rows reach the disk within ~0.2 s.
FLUSH_INTERVAL_S = 0.2
# How long a row waits for its connection's caller to be resolved (it usually
# is, long before the response ends); past it the row is stored unattributed.
CALLER_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class CapturedCall:
    """Everything the proxy thread knows about one finished LLM call."""

    id: str
    ts: str
    usage: Any  # hm_agent.capture.CapturedUsage
    latency_ms: int
    ttfb_ms: int | None
    caller: Any = None  # hm_agent.attribution.PendingCaller (resolving on its own thread)
    header_project: str | None = None
    header_tags: str | None = None
    attribution: Any = None  # hm_agent.attribution.Settings when the call came through the addon


_STOP = object()


class RowWriter:
    def __init__(self, db_path: Path, pricing_overrides: list[dict[str, Any]] | None = None) -> None:
        self.db_path = db_path
        self.pricing_overrides = pricing_overrides or []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.blocked_since: float | None = None

    # -- proxy side ---------------------------------------------------------

    def submit(self, call: CapturedCall) -> None:
        """Hand a call to the writer. Never blocks, never raises."""
        with self._pending_lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                return
            self._pending += 1
        self._queue.put(call)

    @property
    def pending(self) -> int:
        return self._pending

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self._store = Store(self.db_path, busy_timeout_ms=200)
        self._thread = threading.Thread(target=self._run, name="hm-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Write every pending row, then stop. False if the database stayed locked past timeout."""
        if self._thread is None:
            return True
        self._deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        self._thread.join(timeout + 1.0)
        alive = self._thread.is_alive()
        if not alive:
            self._store.close()
        return not alive and self._pending == 0

    def health(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "pending": self._pending,
            "dropped": self.dropped,
            "last_error": self.last_error,
            "blocked_for_s": None if self.blocked_since is None else round(time.monotonic() - self.blocked_since, 1),
        }

    # -- writer thread --------------------------------------------------------

    _deadline: float | None = None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[CapturedCall] = []
            item = self._queue.get()
            if item is not _STOP:
                time.sleep(FLUSH_INTERVAL_S)
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= BATCH_MAX:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch, stopping)
            if stopping:
                # Everything queued before _STOP has been taken; pick up stragglers too.
                rest: list[CapturedCall] = []
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        rest.append(item)
                for start in range(0, len(rest), BATCH_MAX):
                    self._write(rest[start:start + BATCH_MAX], True)

    def _write(self, batch: list[CapturedCall], stopping: bool) -> None:
        rows = [build_row(c, self.pricing_overrides) for c in batch]
        delay = 0.02
        while True:
            try:
                self._store.insert_rows(rows)
            except sqlite3.OperationalError as exc:
                # Locked/busy or a full disk: keep the rows in memory and retry.
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                    log.warning("database write failed (%s); %d rows waiting in memory", exc, self._pending)
                self.last_error = f"database write failed: {exc}"
                if stopping and self._deadline is not None and time.monotonic() > self._deadline:
                    log.error("gave up writing %d rows at shutdown: %s", len(rows), exc)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            except Exception as exc:  # a bug must not kill the writer: skip the batch, say so
                log.exception("dropping %d rows that could not be written", len(rows))
                self.last_error = f"rows dropped: {exc}"
                self.dropped += len(rows)
                self._done(len(rows))
                return
            if self.blocked_since is not None:
                log.info("database writable again after %.1fs", time.monotonic() - self.blocked_since)
            self.blocked_since = None
            self.last_error = None
            self.written += len(rows)
            self._done(len(rows))
            return

    def _done(self, n: int) -> None:
        with self._pending_lock:
            self._pending -= n


def build_row(call: CapturedCall, overrides: list[dict[str, Any]]) -> StoredRow:
    """Price a captured call and shape it as the stored row and the api.md Row."""
    usage = call.usage
    from .capture import pricing

    try:
        cost, price_version = pricing.price(usage, overrides)
    except Exception:  # a pricing bug leaves the cost unknown, never invents $0
        log.exception("pricing failed for model %r", getattr(usage, "model", "?"))
        cost, price_version = None, "unpriced"
    try:
        # capture's flags (incomplete, unparsed, usage_missing) plus pricing's (unknown_model)
        flags = set(pricing.flags_after_pricing(usage, cost, price_version))
    except Exception:
        log.exception("pricing flags failed for model %r", getattr(usage, "model", "?"))
        flags = set(getattr(usage, "flags", ()) or ())
    attr = _attribution(call)
    flags.update(attr.flags)
    synced = call.attribution.sync if call.attribution is not None else frozenset()
    tags_json = json.dumps(attr.tags, separators=(",", ":"), ensure_ascii=False) if attr.tags else None
    row = UsageRow(
        id=call.id,
        ts=call.ts,
        provider=usage.provider,
        model=usage.model,
        endpoint=usage.endpoint,
        status=usage.status,
        stream=bool(usage.stream),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_usd=cost,
        price_version=price_version,
        latency_ms=max(0, int(call.latency_ms)),
        ttfb_ms=None if call.ttfb_ms is None else max(0, int(call.ttfb_ms)),
        # The row that is uploaded carries only what [attribution] sync_* allows.
        project=attr.project if "project" in synced else None,
        repo=attr.repo if "repo" in synced else None,
        branch=attr.branch if "branch" in synced else None,
        program=attr.program if "program" in synced else None,
        os_user=attr.os_user if "os_user" in synced else None,
        tags=attr.tags if "tags" in synced else None,
    )
    return StoredRow(
        id=row.id, ts=row.ts, provider=row.provider, model=row.model, host=usage.host,
        endpoint=row.endpoint, status=row.status, stream=row.stream,
        input_tokens=row.input_tokens, output_tokens=row.output_tokens,
        cache_read_tokens=row.cache_read_tokens, cache_write_tokens=row.cache_write_tokens,
        reasoning_tokens=row.reasoning_tokens, cost_usd=row.cost_usd,
        price_version=row.price_version, latency_ms=row.latency_ms, ttfb_ms=row.ttfb_ms,
        flags=" ".join(sorted(flags)), row_json=row.to_json(),
        project=attr.project, repo=attr.repo, branch=attr.branch, program=attr.program,
        os_user=attr.os_user, tags=tags_json,
    )


def _attribution(call: CapturedCall) -> Attributed:
    if call.attribution is None:
        return Attributed()
    try:
        caller = call.caller.wait(CALLER_WAIT_S) if call.caller is not None else None
        return attribute(call.attribution, caller, call.header_project, call.header_tags)
    except Exception:  # attribution must never cost a row
        log.exception("attribution failed; the row is stored unattributed")
        return Attributed(flags=("unattributed",))
