"""Per-day rollups of usage rows (``usage_rollups``; docs/cloud.md, "Rollups").

A rollup row sums the usage rows of one workspace, day, machine, provider,
model, project, OS user and priced flag (db.ROLLUP_KEYS). Everything the
dashboard, totals, reconcile, budgets and the usage API show for those
dimensions is a sum of rollup rows, exactly equal to the same sum over the
rows themselves:

- ``calls``: rows; ``errors``: HTTP 4xx/5xx or no answer (status 0);
  ``no_usage``: not an error, no price, no input or output token count;
  ``unknown``: not an error, no price, but token counts (a model with no price);
- ``<x>_hi``/``<x>_lo``: the exact sum of ``x`` as two parts
  (``x // 10**9`` and ``x % 10**9``; store.exact_sum / joined_sum), null
  counting as 0, so no legal data can overflow.

This module builds the aggregating SELECT over any usage_rows-shaped source
(the table itself, or an ingest's staging table) and rebuilds rollups from the
rows (the version 5 upgrade, and the check that rollups match the rows).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, case, delete, func, literal_column, or_, select

from .db import ROLLUP_COUNTS, ROLLUP_KEYS, ROLLUP_SUMMED, usage_rollups, usage_rows

SPLIT = 10**9
MEASURES = (*ROLLUP_COUNTS, *(f"{name}_{part}" for name in ROLLUP_SUMMED for part in ("hi", "lo")))
"""The rollup columns that are summed (every column but the keys), in table order."""

assert tuple(c.name for c in usage_rollups.columns) == (*ROLLUP_KEYS, *MEASURES)


def outcome_sums(c: Any) -> tuple[Any, Any, Any]:
    """SQL sums counting, over columns ``c`` of usage_rows' shape, the three kinds of
    unpriced row apart: errors (HTTP 4xx/5xx or no answer: not spend), rows without
    usage (no input or output token count) and rows whose model has no price. The
    rollups keep them as errors, no_usage and unknown; store sums rows with them too."""
    error = or_(c.status >= 400, c.status == 0)
    unpriced = c.cost_nanos.is_(None)
    no_tokens = and_(c.input_tokens.is_(None), c.output_tokens.is_(None))
    return (
        func.sum(case((error, 1), else_=0)),
        func.sum(case((and_(~error, unpriced, no_tokens), 1), else_=0)),
        func.sum(case((and_(~error, unpriced, ~no_tokens), 1), else_=0)),
    )


def aggregate(source: Any) -> Any:
    """SELECT of ``source``'s rows grouped by the rollup keys, with every measure,
    its columns in ``usage_rollups`` order (ready for INSERT … FROM SELECT).

    ``source`` is a table or subquery with usage_rows' column names.
    """
    c = source.c
    unpriced = c.cost_nanos.is_(None)
    keys = (
        c.workspace_id, c.day, c.machine_id, c.provider, c.model,
        func.coalesce(c.project, literal_column("''")), func.coalesce(c.os_user, literal_column("''")), ~unpriced,
    )
    sums: list[Any] = []
    for name in ROLLUP_SUMMED:
        sums.append(func.coalesce(func.sum(c[name] // SPLIT), 0))
        sums.append(func.coalesce(func.sum(c[name] % SPLIT), 0))
    measures = (
        func.count(),
        *outcome_sums(c),
        *sums,
    )
    labelled = [k.label(n) for k, n in zip(keys, ROLLUP_KEYS, strict=True)]
    labelled += [m.label(n) for m, n in zip(measures, MEASURES, strict=True)]
    return select(*labelled).group_by(*keys)


def rebuild(conn: Connection, workspace_id: str | None = None) -> int:
    """Recompute the rollups of one workspace (None: all) from its rows; the rollup row count.

    PostgreSQL: first takes ``usage_rollups`` in SHARE ROW EXCLUSIVE mode, so ingests
    and retention chunks (which upsert rollup rows) wait until this transaction ends
    and then add to what it wrote; SQLite: the caller's write transaction already
    keeps every other writer out."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE usage_rollups IN SHARE ROW EXCLUSIVE MODE")
    rows = usage_rows
    where = [] if workspace_id is None else [usage_rows.c.workspace_id == workspace_id]
    drop = delete(usage_rollups)
    if workspace_id is not None:
        drop = drop.where(usage_rollups.c.workspace_id == workspace_id)
    conn.execute(drop)
    source = select(rows).where(*where).subquery() if where else rows
    result = conn.execute(usage_rollups.insert().from_select(list(ROLLUP_KEYS + MEASURES), aggregate(source)))
    return int(result.rowcount or 0)


def mismatches(conn: Connection, workspace_id: str) -> list[tuple[Any, ...]]:
    """Rollup rows that differ from a fresh aggregate of the workspace's rows
    (empty: they match exactly). For tests and ``halton-meter-cloud`` checks."""
    fresh = {tuple(r[: len(ROLLUP_KEYS)]): tuple(r[len(ROLLUP_KEYS):]) for r in conn.execute(
        aggregate(select(usage_rows).where(usage_rows.c.workspace_id == workspace_id).subquery()))}
    kept = {tuple(r[: len(ROLLUP_KEYS)]): tuple(r[len(ROLLUP_KEYS):]) for r in conn.execute(
        select(usage_rollups).where(usage_rollups.c.workspace_id == workspace_id))}
    return sorted(
        (key, fresh.get(key), kept.get(key)) for key in fresh.keys() | kept.keys()
        if _normal(fresh.get(key)) != _normal(kept.get(key))
    )


def _normal(measures: tuple[Any, ...] | None) -> tuple[int, ...] | None:
    """Measures with a split sum normalised (hi, lo can differ in form, not in value: a
    merged rollup's lo may exceed 10**9), so equal totals compare equal."""
    if measures is None:
        return None
    counts = tuple(int(m) for m in measures[: len(ROLLUP_COUNTS)])
    parts = [int(m) for m in measures[len(ROLLUP_COUNTS):]]
    return counts + tuple(parts[i] * SPLIT + parts[i + 1] for i in range(0, len(parts), 2))


# -- keeping them exact as rows come and go -----------------------------------------

_USED = ("workspace_id", "day", "machine_id", "provider", "model", "project", "os_user", "status", "cost_nanos",
         *ROLLUP_SUMMED[1:])
"""The usage_rows columns :func:`aggregate` reads."""


def upsert(insert: Any, source: Any, *, subtract: bool = False) -> Any:
    """INSERT INTO usage_rollups the aggregate of ``source``, adding its measures to
    (``subtract``: taking them from) the rollup rows that exist. ``insert`` is the
    dialect's ``insert`` (sqlite or postgresql). Groups go in key order, so
    concurrent upserts lock the rollup rows they share in one order (PostgreSQL)."""
    stmt = insert(usage_rollups).from_select(list(ROLLUP_KEYS + MEASURES), aggregate(source).order_by(*ROLLUP_KEYS))
    kept = usage_rollups.c
    return stmt.on_conflict_do_update(
        index_elements=list(ROLLUP_KEYS),
        set_={m: (kept[m] - stmt.excluded[m]) if subtract else (kept[m] + stmt.excluded[m]) for m in MEASURES},
    )


def _compiled(stmt: Any, dialect: Any) -> str:
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def sqlite_ingest_sql() -> str:
    """SQLite: add the rows of usage_rows whose rowid is above ``?`` (the largest rowid
    before the batch's insert) to the rollups. Writers are serialized (BEGIN IMMEDIATE)
    and a new row's rowid is above every rowid held, so these are exactly the batch's
    new rows; see store.ingest_values."""
    from sqlalchemy.dialects import sqlite

    new = select(*(usage_rows.c[n] for n in _USED)).where(literal_column("usage_rows.rowid") > literal_column("?"))
    return _compiled(upsert(sqlite.insert, new.subquery("new")), sqlite.dialect())


def postgresql_ingest_sql(stage_name: str, columns: list[str]) -> str:
    """PostgreSQL, one statement: move the staging table's rows into usage_rows (id
    order, ON CONFLICT DO NOTHING) and add the rows it inserted (RETURNING: exactly
    the new ones, whatever other transactions do) to the rollups in key order; its
    one value is the number of rows inserted."""
    from sqlalchemy import MetaData, Table
    from sqlalchemy.dialects import postgresql

    stage = Table(stage_name, MetaData(), *[c._copy() for c in usage_rows.columns])
    moved = (
        postgresql.insert(usage_rows)
        .from_select(columns, select(*(stage.c[n] for n in columns)).order_by(stage.c.id))
        .on_conflict_do_nothing()
        .returning(*(usage_rows.c[n] for n in _USED))
        .cte("inserted")
    )
    added = upsert(postgresql.insert, moved).returning(literal_column("1")).cte("added")
    return _compiled(select(func.count()).select_from(moved).add_cte(added), postgresql.dialect())  # type: ignore[no-untyped-call]


def _insert_for(conn: Connection) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    return sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert


def subtract_rows(conn: Connection, workspace_id: str, ids: list[str], days: set[str]) -> None:
    """Take the rows ``ids`` of the workspace (of ``days``) out of its rollups, in the
    caller's transaction, before the caller deletes them; a rollup row left with no
    calls goes. The caller holds the rows (SQLite: the write lock; PostgreSQL: SELECT
    … FOR UPDATE), so what is subtracted is exactly what it deletes."""
    if not ids:
        return
    held = select(*(usage_rows.c[n] for n in _USED)).where(
        usage_rows.c.workspace_id == workspace_id, usage_rows.c.id.in_(ids))
    conn.execute(upsert(_insert_for(conn), held.subquery("gone"), subtract=True))
    conn.execute(delete(usage_rollups).where(usage_rollups.c.workspace_id == workspace_id,
                                             usage_rollups.c.day.in_(sorted(days)), usage_rollups.c.calls == 0))


_COL = {c.name: i for i, c in enumerate(usage_rows.columns)}
_KEY_AT = tuple(_COL[n] for n in ("workspace_id", "day", "machine_id", "provider", "model"))
_PROJECT, _OS_USER, _STATUS, _COST = _COL["project"], _COL["os_user"], _COL["status"], _COL["cost_nanos"]
_INPUT, _OUTPUT = _COL["input_tokens"], _COL["output_tokens"]
_SUMMED_AT = tuple(_COL[n] for n in ROLLUP_SUMMED)


def _split(value: int) -> tuple[int, int]:
    """(hi, lo) as SQL's truncating division makes them (hi * SPLIT + lo == value)."""
    hi = value // SPLIT if value >= 0 else -(-value // SPLIT)
    return hi, value - hi * SPLIT


def aggregate_values(values: Any) -> list[tuple[Any, ...]]:
    """:func:`aggregate` computed in Python over row tuples (``usage_rows`` column order):
    the same rollup rows (keys, then MEASURES), for an upsert of plain values.

    The SQLite ingest computes it before it waits for the write lock and uses it when
    every row of the batch was new (then these are exactly the inserted rows)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    width = len(MEASURES)
    for v in values:
        cost = v[_COST]
        key = (*(v[i] for i in _KEY_AT), v[_PROJECT] or "", v[_OS_USER] or "", cost is not None)
        m = groups.get(key)
        if m is None:
            m = groups[key] = [0] * width
        m[0] += 1
        status = v[_STATUS]
        if status >= 400 or status == 0:
            m[1] += 1
        elif cost is None:
            m[2 if v[_INPUT] is None and v[_OUTPUT] is None else 3] += 1
        at = 4
        for i in _SUMMED_AT:
            x = v[i]
            if x:
                if 0 <= x < SPLIT:
                    m[at + 1] += x
                else:
                    hi, lo = _split(x)
                    m[at] += hi
                    m[at + 1] += lo
            at += 2
    return [(*key, *m) for key, m in sorted(groups.items())]


def sqlite_upsert_values_sql() -> str:
    """SQLite: upsert rollup rows given as values (:func:`aggregate_values`)."""
    cols = ", ".join((*ROLLUP_KEYS, *MEASURES))
    marks = ", ".join("?" for _ in (*ROLLUP_KEYS, *MEASURES))
    sets = ", ".join(f"{m} = {m} + excluded.{m}" for m in MEASURES)
    return (f"INSERT INTO usage_rollups ({cols}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(ROLLUP_KEYS)}) DO UPDATE SET {sets}")
