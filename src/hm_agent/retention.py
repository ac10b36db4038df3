"""Local retention: ``[retention] days`` deletes rows of older days, off the proxy's path.

A row goes once its whole UTC day is more than ``days`` days old: with
``days = 30`` on 2026-11-29 the rows of 2026-10-29 and before go, and today and
the 30 days before it stay. Without the setting nothing is ever deleted.

While cloud sync is on (``[cloud] enabled = true``) a row the cloud has not
acknowledged is never deleted, however old: it goes once it has synced. The
component deletes a few hundred rows per short transaction with a pause
between them (the writer's inserts wait at most one batch), then gives the
freed pages back to the file system with ``PRAGMA incremental_vacuum``, a
few at a time. It runs at start, every ``INTERVAL_SECONDS``, and at once when
the setting changes.

A file made before store schema 4 cannot give pages back that way until one
``VACUUM`` has switched it to ``auto_vacuum = INCREMENTAL``; the first pass does
that, here in the background rather than at the daemon's start (the daemon no
longer waits ~15 s per million rows before it proxies). The VACUUM holds the
write lock while it rewrites the file: the writer thread keeps captured rows in
memory and retries (none is lost, the proxy never waits), and a stop interrupts
it (nothing changes; the next start tries again).

:func:`database_facts` is what ``status`` shows (size and oldest row); it
imports nothing heavy, since status must stay fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("hm_agent.retention")

BATCH_ROWS = 500
PAUSE_SECONDS = 0.02
VACUUM_PAGES = 256  # 1 MiB at the default page size, per step
INTERVAL_SECONDS = 3600.0
CHECK_SECONDS = 15.0


def cutoff_day(today: date, days: int) -> str:
    """The first UTC day kept: rows of days before it are deleted."""
    return (today - timedelta(days=days)).isoformat()


def keeps_unsynced(config: Any) -> bool:
    """Unsynced rows are kept while cloud sync is on (paired, or pairing)."""
    return bool(getattr(config, "cloud_enabled", False))


class Retention:
    name = "retention"

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self.deleted = 0
        self.last_run_at: str | None = None
        self.last_cutoff: str | None = None
        self.free_pages: int | None = None
        self.vacuum_switch: str | None = None  # "running", then "done in N s" (files made before schema 4)

    def should_run(self, config: Any, home: Any) -> bool:
        return getattr(config, "retention_days", None) is not None

    def health(self) -> dict[str, Any]:
        return {"deleted_rows": self.deleted, "last_run_at": self.last_run_at,
                "deleting_before": self.last_cutoff, "free_pages": self.free_pages,
                "vacuum_switch": self.vacuum_switch}

    def run_once(self, store: Any, config: Any, pause: Callable[[], None] | None = None) -> int:
        """One full pass (blocking; tests call it with a frozen clock): delete, then reclaim."""
        days = config.retention_days
        if days is None:
            return 0
        now = self._now()
        cutoff = cutoff_day(now.date(), int(days))
        keep = keeps_unsynced(config)
        deleted = 0
        while True:
            n = store.delete_days_before(cutoff, keep_unsynced=keep, limit=BATCH_ROWS)
            deleted += n
            self.deleted += n
            if n < BATCH_ROWS:
                break
            if pause is not None:
                pause()
        if store.needs_vacuum_switch():
            self._switch(store)
        free = store.reclaim_space(VACUUM_PAGES)
        while free > 0:
            if pause is not None:
                pause()
            before = free
            free = store.reclaim_space(VACUUM_PAGES)
            if free >= before:
                break
        self.free_pages = free
        self.last_cutoff = cutoff
        self.last_run_at = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        if deleted:
            log.info("retention: deleted %d rows of days before %s%s", deleted, cutoff,
                     " (unsynced rows kept)" if keep else "")
        return int(deleted)

    def _switch(self, store: Any) -> None:
        """The one VACUUM of a file made before schema 4 (it also gives every free page back)."""
        import time

        log.info("retention: switching %s to auto_vacuum = INCREMENTAL (one VACUUM, about 15 s per "
                 "million rows; captured rows wait in memory meanwhile)", store.path)
        self.vacuum_switch = "running"
        started = time.monotonic()
        try:
            store.switch_to_incremental_vacuum()
        except BaseException:
            self.vacuum_switch = None
            raise
        took = time.monotonic() - started
        self.vacuum_switch = f"done in {took:.1f} s"
        log.info("retention: %s switched to auto_vacuum = INCREMENTAL in %.1f s", store.path, took)

    async def run(self, ctx: Any) -> None:
        import time

        import anyio

        from hm_agent.store import Store

        store = Store(ctx.home.db)

        def pause() -> None:
            time.sleep(PAUSE_SECONDS)  # in the worker thread: the writer gets the lock between batches

        try:
            ran_with: tuple[Any, ...] | None = None
            next_at = 0.0
            while True:
                config = ctx.config
                settings = (config.retention_days, keeps_unsynced(config))
                if settings != ran_with or time.monotonic() >= next_at:
                    try:
                        await anyio.to_thread.run_sync(self.run_once, store, config, pause, abandon_on_cancel=True)
                    except anyio.get_cancelled_exc_class():
                        # Stopping: end a running VACUUM (or batch) at once instead of waiting for it;
                        # close() below then waits only for the statement to unwind.
                        store.interrupt()
                        raise
                    ran_with = settings
                    next_at = time.monotonic() + INTERVAL_SECONDS
                await anyio.sleep(CHECK_SECONDS)
        finally:
            store.close()


def make_component() -> Retention:
    return Retention()


def database_facts(db: Path, store: Any = None) -> dict[str, Any]:
    """``{"bytes": db + WAL size, "oldest": ts of the oldest row or None}``; never raises.

    ``store`` (the daemon's own) is read when given, else the file is opened read-only."""
    size = 0
    for suffix in ("", "-wal"):
        try:
            size += (db.parent / (db.name + suffix)).stat().st_size
        except OSError:
            pass
    oldest: str | None = None
    try:
        if store is not None:
            oldest = store.oldest_row_ts()
        elif db.exists():
            from hm_agent.store import Store

            with Store(db, readonly=True) as ro:
                oldest = ro.oldest_row_ts()
    except Exception:  # a damaged file: status reports that elsewhere
        oldest = None
    return {"bytes": size, "oldest": oldest}
