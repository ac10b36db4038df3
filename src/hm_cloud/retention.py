"""Cloud retention: how long a workspace keeps its usage rows, enforced by a scheduled job.

Owners and admins set it on ``/{workspace}/settings/retention`` (default: keep
everything; at least ``MIN_DAYS`` when set). A row goes once its whole UTC day is
more than N days old (the daemon's ``[retention] days`` rule): with 30 on
2026-11-29 the rows of 2026-10-29 and before go. Changing it shows how many rows
will go and asks for confirmation; the change is in the audit log.

The job runs inside every server process (a thread started by ``serve``), but a
lease in the database (``job_leases``) lets exactly one of them run each pass,
however many processes share the database: the pass is due ``INTERVAL`` after the
last one finished, and a holder that dies loses the lease after ``LEASE_SECONDS``.
It deletes in chunks, each its own short transaction, sized so that a chunk takes
at most ``CHUNK_TARGET_S`` and with a pause between chunks, so an ingest (the only
other writer of usage_rows) waits at most one chunk. What it deleted goes to the
audit log, per workspace.

The daemon learns the retention from ``GET /v1/whoami`` and the totals answer
(``retention_days``, ``retained_from``), and reconcile leaves the older days alone
(docs/api.md).

The audit log has its own retention, the same for every workspace and longer
than most data retentions: ``DEFAULT_AUDIT_DAYS`` unless the operator says
otherwise (``serve --audit-days``, passed to every process in ``AUDIT_DAYS_ENV``).
A workspace's own setting never shortens it, so an admin cannot erase the record
of what they did by setting a 7-day retention. The same pass deletes it, in
chunks of the oldest entries (index ``audit_log_at``, schema 6).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_start
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import rollups, team
from .db import audit_log, job_leases, request_bodies, usage_rows, workspace_settings, workspaces
from .pages import (  # also registers {:slug}
    _csrf_failed,
    _form,
    member_page,
    redirect,
    render,
    session_of,
)
from .security import csrf_ok
from .state import client_address, cloud
from .store import background, lock_row, write_transaction

log = logging.getLogger("hm_cloud.retention")

MIN_DAYS = 7
MAX_DAYS = 36_500
JOB = "retention"
INTERVAL_ENV = "HALTON_METER_CLOUD_RETENTION_INTERVAL_S"
CHECK_ENV = "HALTON_METER_CLOUD_RETENTION_CHECK_S"  # how often a process asks for the lease
DEFAULT_INTERVAL_S = 3600.0
LEASE_SECONDS = 60.0
CHUNK_TARGET_S = 0.03  # well under the 100 ms an ingest may wait (measured: bench_cloud_retention.py)
FIRST_CHUNK = 200
MIN_CHUNK, MAX_CHUNK = 50, 5000
PAUSE_S = 0.1  # SQLite: a waiting writer's busy handler sleeps up to 100 ms between tries
AUDIT_DAYS_ENV = "HALTON_METER_CLOUD_AUDIT_DAYS"
DEFAULT_AUDIT_DAYS = 400  # over a year: a yearly access review still sees the whole year
MIN_AUDIT_DAYS = 30


class RetentionError(ValueError):
    """A retention form that cannot be saved; the message says what to fix."""


def cutoff(today: date, days: int) -> str:
    """The first UTC day kept: rows of days before it go."""
    return (today - timedelta(days=days)).isoformat()


def utc_today(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


def parse_days(value: str) -> int | None:
    """The form's value: empty or "keep" keeps everything; else MIN_DAYS-MAX_DAYS."""
    text = value.strip().lower()
    if text in ("", "keep", "0"):
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 6:  # '²'.isdigit(), int('²') fails
        raise RetentionError(f"Retention must be a whole number of days ({MIN_DAYS} or more), or empty to keep everything.")
    days = int(text)
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise RetentionError(f"Retention must be at least {MIN_DAYS} days and at most {MAX_DAYS}; leave it empty to keep everything.")
    return days


def parse_audit_days(value: str) -> int | None:
    """``serve --audit-days``: 0 keeps the audit log for ever (None), else MIN_AUDIT_DAYS-MAX_DAYS."""
    text = value.strip()
    if text == "0":
        return None
    if not text.isdigit() or len(text) > 6 or not MIN_AUDIT_DAYS <= int(text) <= MAX_DAYS:
        raise RetentionError(f"--audit-days {value[:20]!r}: use a whole number of days from {MIN_AUDIT_DAYS} "
                             f"to {MAX_DAYS}, or 0 to keep the audit log for ever")
    return int(text)


def audit_days() -> int | None:
    """How long this server keeps audit entries (None: for ever); DEFAULT_AUDIT_DAYS unless set."""
    try:
        return parse_audit_days(os.environ.get(AUDIT_DAYS_ENV, str(DEFAULT_AUDIT_DAYS)))
    except RetentionError:
        return DEFAULT_AUDIT_DAYS


def retention_days(conn: Connection | Engine, workspace_id: str) -> int | None:
    query = select(workspace_settings.c.retention_days).where(workspace_settings.c.workspace_id == workspace_id)
    if isinstance(conn, Engine):
        with conn.connect() as c:
            found = c.execute(query).scalar()
    else:
        found = conn.execute(query).scalar()
    return None if found is None else int(found)


def rows_before(engine: Engine, workspace_id: str, day: str) -> int:
    """How many rows of the workspace are of days before ``day`` (what a change would delete)."""
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(usage_rows)
            .where(usage_rows.c.workspace_id == workspace_id, usage_rows.c.day < day)
        ).scalar() or 0)


def set_retention(engine: Engine, workspace_id: str, days: int | None, actor: str | None,
                  address: str | None, now: float) -> int | None:
    """Save the setting and its audit entry in one transaction; returns the previous value."""
    with write_transaction(engine) as conn:
        lock_row(conn, workspaces, workspace_id)  # two first saves at once both INSERTed (PostgreSQL: a 500)
        before = retention_days(conn, workspace_id)
        updated = conn.execute(
            workspace_settings.update().where(workspace_settings.c.workspace_id == workspace_id)
            .values(retention_days=days, updated_at=now)
        ).rowcount
        if not updated:
            conn.execute(workspace_settings.insert().values(
                workspace_id=workspace_id, retention_days=days, updated_at=now))
        team.audit(conn, workspace_id, actor, "retention.change",
              f"{describe(days)} (was {describe(before)})", address, now)
    return before


def describe(days: int | None) -> str:
    return "keep everything" if days is None else f"{days} days"


# -- the lease -------------------------------------------------------------------


def acquire(engine: Engine, holder: str, now: float, interval: float, name: str = JOB) -> bool:
    """Take the job if it is due (``interval`` since the last pass) and nobody holds it."""
    with engine.begin() as conn:
        if conn.execute(select(job_leases.c.name).where(job_leases.c.name == name)).first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(job_leases.insert().values(name=name, holder=None, expires_at=0.0,
                                                            last_done_at=None, runs=0))
            except IntegrityError:
                pass  # another process made it first
        taken = conn.execute(
            job_leases.update()
            .where(job_leases.c.name == name, job_leases.c.expires_at < now,
                   (job_leases.c.last_done_at.is_(None)) | (job_leases.c.last_done_at <= now - interval))
            .values(holder=holder, expires_at=now + LEASE_SECONDS)
        ).rowcount
    return bool(taken)


def renew(engine: Engine, holder: str, now: float, name: str = JOB) -> bool:
    """Extend the lease; False if it was lost (expired and taken): stop working then."""
    with engine.begin() as conn:
        return bool(conn.execute(
            job_leases.update().where(job_leases.c.name == name, job_leases.c.holder == holder)
            .values(expires_at=now + LEASE_SECONDS)
        ).rowcount)


def finish(engine: Engine, holder: str, now: float, name: str = JOB) -> None:
    """The pass is done: record it and free the lease."""
    with engine.begin() as conn:
        conn.execute(
            job_leases.update().where(job_leases.c.name == name, job_leases.c.holder == holder)
            .values(holder=None, expires_at=0.0, last_done_at=now, runs=job_leases.c.runs + 1)
        )


# -- one pass ---------------------------------------------------------------------


@dataclass
class Pass:
    """What one pass did, per workspace, and how long its longest chunk held the database."""

    deleted: dict[str, int] = field(default_factory=dict)
    audit_deleted: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    longest_chunk_s: float = 0.0


def _delete_chunk(engine: Engine, workspace_id: str, before: str, limit: int) -> int:
    """Up to ``limit`` rows of days before ``before``, their request bodies and their share
    of the rollups (rollups.subtract_rows), in one transaction. The rows are held from the
    SELECT on (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE), so the rollups lose
    exactly what is deleted."""
    with write_transaction(engine) as conn:
        found = conn.execute(select(usage_rows.c.id, usage_rows.c.day).where(
            usage_rows.c.workspace_id == workspace_id, usage_rows.c.day < before).limit(limit).with_for_update()).all()
        if not found:
            return 0
        ids = [r[0] for r in found]
        conn.execute(request_bodies.delete().where(request_bodies.c.workspace_id == workspace_id,
                                                   request_bodies.c.id.in_(ids)))
        rollups.subtract_rows(conn, workspace_id, ids, {r[1] for r in found})
        return int(conn.execute(
            usage_rows.delete().where(usage_rows.c.workspace_id == workspace_id, usage_rows.c.id.in_(ids))
        ).rowcount)


def _delete_audit_chunk(engine: Engine, before_at: float, limit: int, counts: dict[str, int]) -> int:
    """Up to ``limit`` audit entries older than ``before_at``, oldest first, in one transaction;
    ``counts`` gets how many per workspace."""
    with write_transaction(engine) as conn:
        old = conn.execute(select(audit_log.c.id, audit_log.c.workspace_id).where(audit_log.c.at < before_at)
                           .order_by(audit_log.c.at).limit(limit)).all()
        if old:
            conn.execute(audit_log.delete().where(audit_log.c.id.in_([r.id for r in old])))
    for r in old:
        counts[str(r.workspace_id)] = counts.get(str(r.workspace_id), 0) + 1
    return len(old)


def run_pass(engine: Engine, today: date, now: float, *, audit_days: int | None = None,
             keep_going: Callable[[], bool] = lambda: True, pause: Callable[[float], object] = time.sleep,
             clock: Callable[[], float] = time.perf_counter) -> Pass:
    """Delete, for every workspace with a retention, its rows of days before the cutoff; then,
    with ``audit_days``, the audit entries of days before that cutoff (every workspace)."""
    done = Pass()
    chunk = FIRST_CHUNK

    def chunked(delete: Callable[[int], int]) -> int:
        """``delete(limit)`` until it deletes fewer than ``limit``, each chunk sized to take about
        CHUNK_TARGET_S, with a pause between chunks; returns how many went."""
        nonlocal chunk
        deleted = 0
        while keep_going():
            started = clock()
            n = delete(chunk)
            took = clock() - started
            done.chunks += 1
            done.longest_chunk_s = max(done.longest_chunk_s, took)
            deleted += n
            if n < chunk:
                break
            # Size the next chunk so it takes about CHUNK_TARGET_S.
            if took > CHUNK_TARGET_S:
                chunk = max(MIN_CHUNK, chunk // 2)
            elif took < CHUNK_TARGET_S / 3:
                chunk = min(MAX_CHUNK, chunk * 2)
            pause(PAUSE_S)
        return deleted

    def audited(workspace_id: str, action: str, target: str) -> None:
        with engine.begin() as conn:
            team.audit(conn, workspace_id, None, action, target, None, now)

    with engine.connect() as conn:
        settings = conn.execute(
            select(workspace_settings.c.workspace_id, workspace_settings.c.retention_days)
            .join(workspaces, workspaces.c.id == workspace_settings.c.workspace_id)
            .where(workspace_settings.c.retention_days.is_not(None))
        ).all()
    for workspace_id, days in settings:
        before = cutoff(today, int(days))
        deleted = chunked(lambda limit: _delete_chunk(engine, workspace_id, before, limit))  # noqa: B023
        if deleted:
            done.deleted[workspace_id] = deleted
            audited(workspace_id, "retention.delete", f"{deleted} rows of days before {before} ({days}-day retention)")
            log.info("retention: deleted %d rows of workspace %s (days before %s)", deleted, workspace_id, before)
    if audit_days is not None:
        before = cutoff(today, audit_days)
        before_at = datetime.combine(date.fromisoformat(before), day_start(), UTC).timestamp()
        counts: dict[str, int] = {}
        chunked(lambda limit: _delete_audit_chunk(engine, before_at, limit, counts))
        for workspace_id, n in sorted(counts.items()):
            done.audit_deleted[workspace_id] = n
            audited(workspace_id, "audit.delete",
                    f"{n} audit entries of days before {before} ({audit_days}-day audit retention)")
        if counts:
            log.info("retention: deleted %d audit entries of days before %s", sum(counts.values()), before)
    return done


def run_if_due(engine: Engine, holder: str, interval: float, now: Callable[[], float] = time.time,
               pause: Callable[[float], object] = time.sleep, stopped: Callable[[], bool] = lambda: False,
               audit_days: int | None = None) -> Pass | None:
    """One scheduler check: run a pass if this process gets the lease; None when it did not."""
    if not acquire(engine, holder, now(), interval):
        return None
    renewed_at = now()

    def keep_going() -> bool:
        nonlocal renewed_at
        if stopped():
            return False
        if now() - renewed_at < LEASE_SECONDS / 3:
            return True
        renewed_at = now()
        return renew(engine, holder, renewed_at)

    try:
        return run_pass(engine, utc_today(now()), now(), audit_days=audit_days, keep_going=keep_going,
                        pause=pause)
    finally:
        finish(engine, holder, now())


def _seconds(env: str, default: float) -> float:
    try:
        value = float(os.environ.get(env, default))
    except ValueError:
        return default
    return min(max(value, 0.1), 7 * 86400.0) if value == value else default


def start_scheduler(engine: Engine) -> Callable[[], None]:
    """Start the job's thread in this server process; returns what stops it."""
    holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    interval = _seconds(INTERVAL_ENV, DEFAULT_INTERVAL_S)
    check = _seconds(CHECK_ENV, min(interval, 60.0))
    keep_audit = audit_days()

    def loop(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                run_if_due(engine, holder, interval, pause=stop.wait, stopped=stop.is_set, audit_days=keep_audit)
            except Exception:  # a database hiccup: try again at the next check
                log.exception("retention pass failed")
            stop.wait(check)

    return background("hm-cloud-retention", loop)


def whoami_fields(engine: Engine, workspace_id: str, now: float) -> dict[str, Any]:
    """``retention_days``, ``retained_from`` (the first day kept; null when keeping all) and
    ``accept_bodies`` (the workspace takes request bodies from machines that sync them)."""
    with engine.connect() as conn:
        found = conn.execute(select(workspace_settings.c.retention_days, workspace_settings.c.accept_bodies)
                             .where(workspace_settings.c.workspace_id == workspace_id)).first()
    days = None if found is None or found[0] is None else int(found[0])
    return {"retention_days": days, "retained_from": None if days is None else cutoff(utc_today(now), days),
            "accept_bodies": bool(found is not None and found[1])}


# -- the settings page ---------------------------------------------------------------


async def retention_page(request: Request) -> Response:
    """GET: the setting. POST (days): the confirmation, with how many rows will go.
    POST (days, confirm=yes): saved, audited, back to GET."""
    found = await member_page(request, "change_settings", "Only owners and admins change the retention.")
    if isinstance(found, Response):
        return found
    _uid, email, ws, _mine = found
    state = cloud(request)
    now = time.time()
    current = await state.db(retention_days, ws.id)
    ctx = found.ctx(current=current, describe=describe, min_days=MIN_DAYS, audit_days=audit_days())
    status = 200
    if request.method == "POST":
        form = await _form(request)
        if not csrf_ok(session_of(request), form.get("csrf_token")):
            return _csrf_failed(request)
        if form.get("action") in ("accept_bodies", "refuse_bodies", "delete_bodies"):
            from . import request_bodies as rb

            address = client_address(request)
            if form["action"] == "delete_bodies":
                await state.db(rb.delete_bodies, ws.id, email, address, now)
            else:
                await state.db(rb.set_accept, ws.id, form["action"] == "accept_bodies", email, address, now)
            return redirect(request, f"/{ws.slug}/settings/retention")
        try:
            days = parse_days(form.get("days", ""))
        except RetentionError as exc:
            ctx["error"], ctx["typed"] = str(exc), form.get("days", "")[:20]
            return render(request, "retention.html", ctx, status=400)
        if form.get("confirm") == "yes":
            await state.db(set_retention, ws.id, days, email, client_address(request), now)
            return redirect(request, f"/{ws.slug}/settings/retention")
        ctx["confirm"] = True
        ctx["days"] = days
        if days is not None:
            ctx["first_kept"] = cutoff(utc_today(now), days)
            ctx["will_go"] = await state.db(rows_before, ws.id, ctx["first_kept"])
    from . import request_bodies as rb

    ctx["accept_bodies"] = await state.db(rb.accepts, ws.id)
    ctx["stored_bodies"] = await state.db(rb.count_bodies, ws.id)
    ctx["master_problem"] = rb.master_key_problem()
    if current is not None and "confirm" not in ctx:
        ctx["first_kept"] = cutoff(utc_today(now), current)
    return render(request, "retention.html", ctx, status=status)


routes = [Route("/{workspace:slug}/settings/retention", retention_page, methods=["GET", "POST"])]
