"""Every reader answers from usage_rollups exactly what it answers from the rows
(the differential test of docs/cloud.md "Rollups"), on SQLite and PostgreSQL.

Random rows of every kind (errors, status 0, no usage, unknown price, nulls,
names set and unset, the api.md bounds, several machines, owners and days) go
into usage_rows; the rollups are rebuilt from them. Each reader is asked the
same questions with ``raw=True`` (the rows) and by default (the rollups where
the dimensions allow); the answers, ordering included, must be equal. Then the
rows are deleted: the answers that come from rollups must not change, which
shows that they were read from the rollups and not from the rows.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, inspect, select

from hm_cloud import budgets, db, rollups, store, views

WS, OTHER = "ws-reads", "ws-other"
DAYS = [f"2026-11-{d:02d}" for d in range(10, 18)]
MACHINES = [f"machine-{n}" for n in range(6)]  # 0-1: ana's, 2: bob's, 3: no owner recorded, 4: hostname twin, 5: no device
MODELS = {"openai": ["gpt-4o", "gpt-4o-mini"], "anthropic": ["claude-sonnet-4"], "google": ["gemini-2.5-pro"],
          "local": ["llama-x"]}


def _random_row(rng: random.Random, n: int, workspace: str) -> dict[str, Any]:
    provider = rng.choice(sorted(MODELS))
    kind = rng.choice(["ok", "ok", "ok", "ok", "error", "status0", "no_usage", "unknown", "max", "negative"])

    def tokens() -> int | None:
        return None if rng.random() < 0.2 else rng.randrange(0, 50_000)

    row: dict[str, Any] = dict(
        workspace_id=workspace, id=str(uuid.UUID(int=rng.getrandbits(128))), machine_id=rng.choice(MACHINES),
        day=rng.choice(DAYS), provider=provider, model=rng.choice(MODELS[provider]),
        endpoint="/v1/chat/completions", status=rng.choice([200, 200, 201]), stream=rng.random() < 0.5,
        input_tokens=tokens(), output_tokens=tokens(), cache_read_tokens=tokens(), cache_write_tokens=tokens(),
        reasoning_tokens=tokens(), cost_nanos=rng.randrange(0, 10**10), price_version="v", latency_ms=5,
        ttfb_ms=None, received_at=1.0,
        project=rng.choice([None, "widgets", "gadgets", "Zeta", "a b", "émoji ✓"]),
        repo=rng.choice([None, "acme/widgets", "acme/gadgets"]), branch=rng.choice([None, "main", "dev"]),
        program=rng.choice([None, "claude", "python"]), os_user=rng.choice([None, "ana", "bob", "root"]),
        tags=rng.choice([None, json.dumps({"team": "ml"}), json.dumps({"team": "web", "env": "ci"})]),
    )
    if kind == "error":
        row.update(status=rng.choice([400, 429, 500, 503]), cost_nanos=None)
    elif kind == "status0":
        row.update(status=0, cost_nanos=None, input_tokens=None, output_tokens=None)
    elif kind == "no_usage":
        row.update(cost_nanos=None, input_tokens=None, output_tokens=None)
    elif kind == "unknown":
        row.update(cost_nanos=None, input_tokens=rng.randrange(1, 9999))
    elif kind == "max":
        row.update({name: 10**12 for name in ("input_tokens", "output_tokens", "cache_read_tokens",
                                              "cache_write_tokens", "reasoning_tokens")}, cost_nanos=10**15)
    elif kind == "negative":  # only rows stored before the api.md bounds can hold these
        row.update(input_tokens=-rng.randrange(1, 10**6), cache_read_tokens=-rng.randrange(1, 10**6),
                   cost_nanos=-rng.randrange(1, 10**9))
    row["ts"] = f"{row['day']}T09:00:00Z"
    row["cost_usd"] = None if row["cost_nanos"] is None else "0.1"
    return row


def rows_of_every_kind(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = [_random_row(rng, n, WS) for n in range(count)]
    rows += [_random_row(rng, n, OTHER) for n in range(count // 10)]
    # Only-negative cache reads for one model: its reads add up to less than 0 (left out of cache_reads).
    rows.append(dict(_random_row(rng, 0, WS), provider="local", model="llama-neg", cache_read_tokens=-5))
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres").create_database(f"hm_reads_{uuid.uuid4().hex[:8]}"))
    else:
        url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    engine = db.make_engine(url)
    db.init_schema(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _fill(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        for ws in (WS, OTHER):
            conn.execute(insert(db.workspaces).values(id=ws, slug=ws, name=ws, created_at=0.0))
        conn.execute(insert(db.users), [
            dict(id=1, email="ana@example.com", password_hash="x", created_at=0.0),
            dict(id=2, email="bob@example.com", password_hash="x", created_at=0.0)])
        owners = {0: 1, 1: 1, 2: 2, 3: None, 4: 2}
        conn.execute(insert(db.devices), [
            dict(id=f"d{n}", workspace_id=WS, machine_id=MACHINES[n], hostname="twin" if n in (1, 4) else f"host-{n}",
                 os="linux", agent_version="1", paired_at=0.0, rows_synced=0, approved_by=owner)
            for n, owner in owners.items()])
        conn.execute(insert(db.usage_rows), rows)
        rollups.rebuild(conn)
        assert rollups.mismatches(conn, WS) == []


FILTERS: list[dict[str, str | None]] = [
    {}, {"project": "widgets"}, {"project": None}, {"member": "ana@machine-0"}, {"member": "@machine-1"},
    {"person": "ana@example.com"}, {"person": None}, {"machine": "machine-2"}, {"model": "gpt-4o"},
    {"provider": "anthropic"}, {"project": "a b", "person": "bob@example.com"}, {"os_user": "root"},
    {"os_user": None}, {"project": "nothing-like-this"},
]
FALLBACK_FILTERS: list[dict[str, str | None]] = [{"repo": "acme/widgets"}, {"tag:team": "ml"}, {"branch": None}]
RANGES = [(DAYS[0], DAYS[-1]), (DAYS[2], DAYS[4]), ("2026-12-01", "2026-12-31")]
CHARTS = ("model", "machine", "person", "member", "provider")


def _cases() -> list[tuple[str, bool, Callable[..., Any]]]:
    """(name, answered from rollups, call(engine, raw) -> answer)."""
    out: list[tuple[str, bool, Callable[..., Any]]] = []
    groups = (*store.GROUPS, "person", "tag:team")
    for lo, hi in RANGES:
        whole = (lo, hi) == RANGES[0]  # every filter on the whole range; a few on the others
        for group in groups:
            for filters in FILTERS + FALLBACK_FILTERS if whole else FILTERS[:6:2] + FALLBACK_FILTERS[:1]:
                rollup = group in store.ROLLUP_DIMENSIONS and all(d in store.ROLLUP_DIMENSIONS for d in filters)
                out.append((f"spend_breakdown {lo} {group} {filters}", rollup,
                            lambda e, raw, a=(lo, hi, group, filters): store.spend_breakdown(e, WS, *a, raw=raw)))
        for chart in CHARTS:
            for filters in FILTERS + FALLBACK_FILTERS[:1] if whole else FILTERS[:6:2]:
                rollup = all(d in store.ROLLUP_DIMENSIONS for d in filters)
                out.append((f"spend_per_day {lo} {chart} {filters}", rollup,
                            lambda e, raw, a=(lo, hi, chart, filters): store.spend_per_day(e, WS, *a, raw=raw)))
                out.append((f"spend_by_day_and {lo} {chart} {filters}", rollup,
                            lambda e, raw, a=(lo, hi, chart, filters): store.spend_by_day_and(e, WS, *a, raw=raw)))
        for filters in FILTERS + FALLBACK_FILTERS:
            rollup = all(d in store.ROLLUP_DIMENSIONS for d in filters)
            out.append((f"cache_reads {lo} {filters}", rollup,
                        lambda e, raw, a=(lo, hi, filters): store.cache_reads(e, WS, *a, raw=raw)))
        out.append((f"focus_groups {lo}", True, lambda e, raw, a=(lo, hi): store.focus_groups(e, WS, *a, raw=raw)))
        for machine in MACHINES:
            out.append((f"machine_totals {lo} {machine}", True,
                        lambda e, raw, a=(machine, lo, hi): store.machine_totals(e, WS, *a, raw=raw)))
            for group in (*store.GROUPS, "tag:team"):
                out.append((f"machine_group_totals {lo} {machine} {group}", group in store.ROLLUP_DIMENSIONS,
                            lambda e, raw, a=(machine, lo, hi, group): store.machine_group_totals(
                                e, WS, *a, raw=raw)))
        for kind, value in (("workspace", None), ("machine", "machine-1"), ("member", "ana"), ("member", "root"),
                            ("project", "widgets"), ("project", "émoji ✓"), ("project", "none-such")):
            budget = budgets.Budget("b", "b", kind, value, "month", 10**9, (50,), None)

            def spend(e: Engine, raw: bool, b: budgets.Budget = budget, r: tuple[str, str] = (lo, hi)) -> int:
                with e.connect() as conn:
                    return budgets.spend_nanos(conn, WS, b, date.fromisoformat(r[0]), date.fromisoformat(r[1]),
                                               raw=raw)

            out.append((f"budget {lo} {kind} {value}", True, spend))
        for group in ("project", "member", "repo"):
            for chart in CHARTS:
                for filters in (FILTERS if chart == "model" and whole else FILTERS[4:6]) + FALLBACK_FILTERS[1:2]:
                    rollup = group != "repo" and all(d in store.ROLLUP_DIMENSIONS for d in filters)
                    out.append((f"dashboard_sums {lo} {group} {chart} {filters}", rollup,
                                lambda e, raw, a=(lo, hi, group, chart, filters): _dashboard(e, raw, *a)))
    return out


def _dashboard(engine: Engine, raw: bool, lo: str, hi: str, group: str, chart: str,
               filters: dict[str, str | None]) -> dict[str, Any]:
    """dashboard_sums with its lists as the page orders them (each way it can)."""
    sums = store.dashboard_sums(engine, WS, lo, hi, DAYS[0], DAYS[1], group, chart, filters, raw=raw)
    out = {"day": sums["groups"]["day"], "rest": sums | {"groups": None}}
    for sort in views.SORTS:
        for name in ("split", "member", "person", "machine", "model", "provider"):
            listed = [dict(g) for g in sums["groups"][name]]
            views.sort_groups(listed, sort)
            out[f"{name} by {sort}"] = listed
    out["rest"]["per_series"] = sorted((k, sorted(v.items())) for k, v in sums["per_series"].items())
    return out


def _ordered(value: Any) -> Any:
    """``value`` with every dict as a list of its items: equal only if the order is equal too."""
    if isinstance(value, dict):
        return [(k, _ordered(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [_ordered(v) for v in value]
    return value


def test_every_reader_answers_the_same_from_rollups_as_from_rows(engine: Engine) -> None:
    _fill(engine, rows_of_every_kind(1802, 600))
    cases = _cases()
    from_rows = {name: _ordered(call(engine, True)) for name, _rollup, call in cases}
    assert sum(1 for answer in from_rows.values() if answer) > len(cases) // 2  # mostly not empty answers
    reads = store.cache_reads(engine, WS, DAYS[0], DAYS[-1])
    assert reads and all(tokens > 0 for _p, _m, tokens in reads) and "llama-neg" not in {m for _p, m, _t in reads}
    for name, _rollup, call in cases:
        assert _ordered(call(engine, False)) == from_rows[name], name
    with engine.begin() as conn:  # the rows gone, the rollups kept: rollup answers stay
        conn.execute(delete(db.usage_rows).where(db.usage_rows.c.workspace_id == WS))
    for name, rollup, call in cases:
        if rollup:
            assert _ordered(call(engine, False)) == from_rows[name], name


def test_the_rollups_switch_off_reads_rows(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(engine, rows_of_every_kind(7, 50))
    before = store.spend_breakdown(engine, WS, DAYS[0], DAYS[-1], "model")
    assert before
    with engine.begin() as conn:
        conn.execute(delete(db.usage_rows).where(db.usage_rows.c.workspace_id == WS))
    assert store.spend_breakdown(engine, WS, DAYS[0], DAYS[-1], "model") == before
    monkeypatch.setenv(store.ROLLUPS_ENV, "off")
    assert store.spend_breakdown(engine, WS, DAYS[0], DAYS[-1], "model") == []


def test_a_version_6_database_gains_the_rollups_range_index(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX usage_rollups_workspace_day")
        conn.execute(db.schema_version.update().values(version=6))
    db.init_schema(engine)
    assert "usage_rollups_workspace_day" in {i["name"] for i in inspect(engine).get_indexes("usage_rollups")}
    with engine.connect() as conn:
        assert conn.execute(select(db.schema_version.c.version)).scalar_one() == db.SCHEMA_VERSION >= 7
