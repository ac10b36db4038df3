"""The writer thread: captured calls in (never blocking the proxy), rows out.

The proxy thread calls :meth:`RowWriter.submit`, which only appends to an
in-memory queue. This thread prices each call (prices are looked up here,
not on the proxy thread), builds the api.md Row, and inserts batches in short
``BEGIN IMMEDIATE`` transactions. A locked or slow database only makes the
queue longer; :meth:`RowWriter.stop` drains it before the daemon exits.

A row the database refuses (it should not happen: capture bounds every count)
costs only itself: the batch is retried row by row and the bad row is kept in
``write_quarantine`` with the reason. Rows still unwritten when the daemon
stops (a full disk) go to the spill file (``hm_agent.spill``), replayed at the
next start.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from hm_proto import UsageRow

from .attribution import Attributed, attribute
from .spill import read_spill, remove_spill, write_spill
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
    bodies: Any = None  # hm_agent.bodies.CapturedBodies when [capture] bodies is on


_STOP = object()

# At shutdown, a database that is locked is waited for until the drain timeout
# (the lock holder usually finishes); a full disk or an I/O error is given this
# long, then the rows go to the spill file.
GIVE_UP_UNWRITABLE_S = 3.0
MAX_COST_USD = Decimal(10**6)  # api.md's bound on one row's cost_usd


def _is_lock(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class RowWriter:
    def __init__(self, db_path: Path, pricing_overrides: list[dict[str, Any]] | None = None,
                 spill_paths: Sequence[Path] = ()) -> None:
        self.db_path = db_path
        self.pricing_overrides = pricing_overrides or []
        self.spill_paths = list(spill_paths)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.quarantined = 0
        self.recovered = 0
        self.last_error: str | None = None
        self.blocked_since: float | None = None
        # Shutdown outcome: rows the database never took, and where they were kept.
        self.unwritten: list[StoredRow] = []
        self.spilled_to: Path | None = None
        self._gave_up = False
        self._stop_result: bool | None = None
        # Called on this thread after each committed batch (hm_agent.rowfeed.RowFeed.poll).
        self.after_write: list[Any] = []
        # [capture] bodies (hm_agent.bodies): settings and the home whose body.key encrypts them.
        self.body_settings: Any = None
        self.home: Path | None = None
        self._body_key: bytes | None = None
        self.bodies_kept = 0

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
        """Write every pending row, then stop. False if some rows are not in the database.

        Rows the database did not take by ``timeout`` are in ``self.unwritten``
        and were appended to the spill file (``self.spilled_to``; None when no
        spill file could be written either).
        """
        if self._thread is None:
            return True
        if self._stop_result is not None:
            return self._stop_result
        self._deadline = time.monotonic() + timeout
        self._stopping = True  # a write retrying since before stop now gives up in time too
        self._queue.put(_STOP)
        self._thread.join(timeout + GIVE_UP_UNWRITABLE_S + 5.0)
        alive = self._thread.is_alive()
        if not alive:
            self._store.close()
        self._stop_result = not alive and self._pending == 0 and not self.unwritten
        return self._stop_result

    def stop_outcome(self) -> dict[str, Any]:
        """After stop: ``{"written", "unwritten", "spilled_to", "lost", "error"}`` (the `stop` reply)."""
        return {
            "written": self.written,
            "unwritten": len(self.unwritten) + self._pending,
            "spilled_to": None if self.spilled_to is None else str(self.spilled_to),
            "lost": self.lost,
            "quarantined": self.quarantined,
            "error": self.last_error,
        }

    @property
    def lost(self) -> int:
        """Rows neither in the database nor in a spill file (after stop)."""
        unkept = 0 if self.spilled_to is not None else len(self.unwritten)
        return unkept + self._pending

    def health(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "pending": self._pending,
            "dropped": self.dropped,
            "quarantined": self.quarantined,
            "recovered": self.recovered,
            "last_error": self.last_error,
            "blocked_for_s": None if self.blocked_since is None else round(time.monotonic() - self.blocked_since, 1),
        }

    # -- writer thread --------------------------------------------------------

    _deadline: float | None = None
    _stopping = False

    def _run(self) -> None:
        self._replay_spills()
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
        if self.unwritten:
            self.spilled_to = write_spill(self.unwritten, self.spill_paths)
            where = self.spilled_to or "nowhere (see the errors above): they are lost"
            log.error("%d rows could not be written to the database; kept in %s", len(self.unwritten), where)

    def _replay_spills(self) -> None:
        """Put the rows a previous run could not write into the database, then delete the file."""
        for path in self.spill_paths:
            if not path.exists():
                continue
            replayed = 0
            try:
                batch: list[StoredRow] = []
                for row in read_spill(path):
                    batch.append(row)
                    if len(batch) >= BATCH_MAX:
                        replayed += self._insert_now(batch)
                        batch = []
                replayed += self._insert_now(batch)
            except (OSError, sqlite3.OperationalError) as exc:
                log.error("could not replay %s (%s); it is kept and tried again at the next start", path, exc)
                self.last_error = f"rows kept in {path} could not be replayed: {exc}"
                continue
            finally:
                self.recovered += replayed
            remove_spill(path)
            log.info("replayed %s: %d rows", path, replayed)

    def _insert_now(self, rows: list[StoredRow]) -> int:
        """Replay: no retry loop (the file stays for the next start); bad rows still isolated."""
        if not rows:
            return 0
        try:
            self._store.insert_rows(rows)
            return len(rows)
        except sqlite3.OperationalError:
            raise
        except Exception:
            pass
        done = 0
        for row in rows:
            try:
                self._store.insert_rows([row])
                done += 1
            except sqlite3.OperationalError:
                raise
            except Exception as exc:
                self._quarantine_now(row, exc)
        return done

    def _write(self, batch: list[CapturedCall], stopping: bool) -> None:
        rows: list[StoredRow] = []
        # One wait budget per batch, not per row: a lagging resolver costs a batch at most
        # CALLER_WAIT_S, and the rows it had no answer for are stored unattributed.
        deadline = time.monotonic() + CALLER_WAIT_S
        for call in batch:
            try:
                rows.append(build_row(call, self.pricing_overrides, max(0.0, deadline - time.monotonic())))
            except Exception as exc:  # a bug must not cost the other rows of the batch
                log.exception("could not build the row of call %s", call.id)
                self._keep_bad(_unbuildable_row(call), exc, stopping)
        self._insert(rows, stopping)
        self._note_ratelimits(batch)
        self._keep_bodies(batch)

    def _keep_bodies(self, batch: list[CapturedCall]) -> None:
        """Redact, cap, encrypt and store the bodies of the batch; never fails a batch."""
        settings = self.body_settings
        calls = [c for c in batch if c.bodies is not None]
        if not calls or settings is None or not settings.keep or self.home is None or self._gave_up:
            return
        from . import bodies

        try:
            if self._body_key is None:
                self._body_key = bodies.load_or_create_key(self.home)
            records = []
            for call in calls:
                plain, truncated = bodies.record(call.id, call.bodies, settings)
                records.append((call.id, truncated, bodies.encrypt(self._body_key, plain)))
            self._store.insert_bodies(records)
            self.bodies_kept += len(records)
        except Exception as exc:
            log.warning("could not keep the bodies of %d calls: %s", len(calls), exc)

    def _note_ratelimits(self, batch: list[CapturedCall]) -> None:
        """The latest rate-limit headers per host and model (status, report --limits); never fails a batch."""
        seen = [(c.usage.host, c.usage.model, c.ts, c.usage.ratelimits) for c in batch
                if getattr(c.usage, "ratelimits", None)]
        if not seen or self._gave_up:
            return
        try:
            self._store.note_ratelimits(seen)
        except Exception as exc:
            log.warning("could not record rate-limit headers: %s", exc)

    def _insert(self, rows: list[StoredRow], stopping: bool) -> None:
        """Write rows; a row the database refuses is isolated and quarantined, never the batch."""
        if not rows:
            return
        if self._gave_up:
            self._keep_unwritten(rows)
            return
        try:
            ok = self._retrying(lambda: self._store.insert_rows(rows), stopping)
        except Exception as exc:  # not a lock or a full disk: something in a row
            if len(rows) == 1:
                self._keep_bad(rows[0], exc, stopping)
                return
            log.warning("a batch of %d rows was refused (%s); writing them one by one", len(rows), exc)
            for row in rows:
                self._insert([row], stopping)
            return
        if not ok:
            self._keep_unwritten(rows)
            return
        self.written += len(rows)
        self._done(len(rows))
        for hook in self.after_write:
            try:
                hook()
            except Exception:
                log.exception("after-write hook failed")

    def _retrying(self, write: Any, stopping: bool) -> bool:
        """Run ``write`` until it succeeds; False if it was given up at shutdown.

        Retries a locked database, a full disk and I/O errors with backoff (the
        rows wait in memory); any other exception is the caller's.
        """
        delay = 0.02
        failing_since: float | None = None
        while True:
            try:
                write()
            except sqlite3.OperationalError as exc:
                # Locked/busy or a full disk: keep the rows in memory and retry.
                now = time.monotonic()
                if self.blocked_since is None:
                    self.blocked_since = now
                    log.warning("database write failed (%s); %d rows waiting in memory", exc, self._pending)
                self.last_error = f"database write failed: {exc}"
                if stopping or self._stopping:
                    failing_since = failing_since or now
                    past_deadline = self._deadline is not None and now > self._deadline
                    if past_deadline or (not _is_lock(exc) and now - failing_since > GIVE_UP_UNWRITABLE_S):
                        log.error("gave up writing to the database at shutdown: %s", exc)
                        self._gave_up = True
                        return False
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if self.blocked_since is not None:
                log.info("database writable again after %.1fs", time.monotonic() - self.blocked_since)
            self.blocked_since = None
            self.last_error = None
            return True

    def _keep_bad(self, row: StoredRow, exc: BaseException, stopping: bool) -> None:
        """A row the database refused: into write_quarantine with the reason, never silently gone."""
        reason = f"{type(exc).__name__}: {exc}"[:500]
        log.error("row %s could not be written (%s); kept in write_quarantine", row.id, reason)
        try:
            ok = self._retrying(lambda: self._store.quarantine_unwritable(row.id, reason, row.row_json), stopping)
        except Exception:
            log.exception("row %s could not be quarantined either; dropped", row.id)
            self.dropped += 1
            self.last_error = f"a row could not be written or quarantined: {reason}"
            self._done(1)
            return
        if not ok:
            self._keep_unwritten([row])
            return
        self.quarantined += 1
        self._done(1)

    def _quarantine_now(self, row: StoredRow, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        log.error("replayed row %s could not be written (%s); kept in write_quarantine", row.id, reason)
        self._store.quarantine_unwritable(row.id, reason, row.row_json)
        self.quarantined += 1

    def _keep_unwritten(self, rows: list[StoredRow]) -> None:
        self.unwritten.extend(rows)
        self._done(len(rows))

    def _done(self, n: int) -> None:
        with self._pending_lock:
            self._pending -= n


def _unbuildable_row(call: CapturedCall) -> StoredRow:
    """What is known of a call whose row could not be built, for write_quarantine."""
    usage = call.usage
    blob = json.dumps({"id": call.id, "ts": call.ts, "usage": repr(usage)[:4000]}).encode()
    return StoredRow(
        id=call.id, ts=call.ts, provider=str(getattr(usage, "provider", "?")), model="?", host="?",
        endpoint="?", status=0, stream=False, input_tokens=None, output_tokens=None,
        cache_read_tokens=None, cache_write_tokens=None, reasoning_tokens=None, cost_usd=None,
        price_version="unpriced", latency_ms=0, ttfb_ms=None, flags="", row_json=blob,
    )


def build_row(call: CapturedCall, overrides: list[dict[str, Any]], caller_wait_s: float = CALLER_WAIT_S) -> StoredRow:
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
    attr = _attribution(call, caller_wait_s)
    flags.update(attr.flags)
    synced = call.attribution.sync if call.attribution is not None else frozenset()
    tags_json = json.dumps(attr.tags, separators=(",", ":"), ensure_ascii=False) if attr.tags else None
    if cost is not None and not _plausible_cost(cost):
        log.warning("model %r priced at %s for one call; cost recorded as unknown", usage.model, cost)
        cost = None
        flags.add("implausible_usage")
    # Within api.md's bounds, so the backend takes every row this builds.
    status = int(usage.status)
    if not MIN_STATUS <= status <= MAX_STATUS:
        flags.add("no_response" if status == 0 else "bad_status")
        status = 502  # what the client got from the proxy when the upstream gave no usable answer
    row = UsageRow(
        id=call.id,
        ts=call.ts,
        provider=_text(usage.provider),
        model=_text(usage.model),
        endpoint=_text(usage.endpoint),
        status=status,
        stream=bool(usage.stream),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_usd=None if cost is None else _cost_12(cost),
        price_version=_text(price_version),
        latency_ms=_duration(call.latency_ms),
        ttfb_ms=None if call.ttfb_ms is None else _duration(call.ttfb_ms),
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


def _attribution(call: CapturedCall, wait_s: float) -> Attributed:
    if call.attribution is None:
        return Attributed()
    try:
        caller = call.caller.wait(wait_s) if call.caller is not None else None
        return attribute(call.attribution, caller, call.header_project, call.header_tags)
    except Exception:  # attribution must never cost a row
        log.exception("attribution failed; the row is stored unattributed")
        return Attributed(flags=("unattributed",))


# api.md "Bounds of a Row": text fields, status, durations, cost decimals.
MAX_TEXT = 512
MIN_STATUS, MAX_STATUS = 100, 599
MAX_DURATION_MS = 86_400_000
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_TWELVE_PLACES = Decimal("1e-12")


def _text(value: object) -> str:
    """An upstream's string as the contract allows it: no control characters, at most 512 characters."""
    text = str(value)
    if len(text) <= MAX_TEXT and text.isascii() and text.isprintable():
        return text  # the usual case, in a tenth of the regex's time
    return _CONTROL.sub("", text)[:MAX_TEXT]


def _duration(ms: int) -> int:
    return min(max(0, int(ms)), MAX_DURATION_MS)


def _cost_12(cost: str) -> str:
    """At most 12 decimal places (a millionth of a millionth of a dollar), rounded half-even."""
    dot = cost.find(".")
    if dot < 0 or len(cost) - dot - 1 <= 12:  # pricing writes plain notation: count the places
        return cost
    text = format(Decimal(cost).quantize(_TWELVE_PLACES, rounding=ROUND_HALF_EVEN), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _plausible_cost(cost: str) -> bool:
    whole = cost.partition(".")[0]
    if whole.isdigit() and len(whole) <= 6:  # 0 <= cost < 10^6 without parsing it
        return True
    try:
        return Decimal(0) <= Decimal(cost) <= MAX_COST_USD
    except (InvalidOperation, ValueError):
        return False
