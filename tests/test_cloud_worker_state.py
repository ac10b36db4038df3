"""The daemon's cloud worker stores and restores SyncSession's state; it decides nothing.

Real home, real SQLite store, real control-command handlers; no backend needed
(nothing here sends a request).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from hm_agent import cloudcommands, cloudservice, cloudworker
from hm_agent.cloudlink import iso_from, iso_from_monotonic, monotonic_from_iso
from hm_agent.config import load_config
from hm_agent.home import paths
from hm_agent.store import Store
from hm_proto import SyncState
from tests.test_cloud_offline import paired_home


def make_ctx(home: Path, store: Store) -> Any:
    return SimpleNamespace(home=paths(home), store=store, config=load_config(home), wake=lambda: None,
                           reload_config_if_changed=lambda: None)


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    home = tmp_path / "home"
    paired_home(home)
    with Store(home / "db.sqlite") as store:
        store.quarantine_rows(["a", "b"], 422, "refused")
        store.set_cloud_state(paused=1, paused_reason="paused_unauthorised",
                              last_reconcile_at=iso_from(time.time() - 3600))
        w = cloudworker.CloudWorker()
        ctx = make_ctx(home, store)
        w.session = anyio.run(w._load, ctx)
        cloudservice.SERVICE.worker = w
        try:
            yield w, ctx
        finally:
            cloudservice.SERVICE.worker = None


def test_a_restart_restores_the_pause_the_counters_and_the_reconcile_rhythm(worker: Any) -> None:
    w, _ctx = worker
    status = w.session.snapshot()
    assert (status.state, status.paused_reason) == (SyncState.PAUSED, "paused_unauthorised")
    assert status.quarantined_rows == 2  # was reset to 0 by every restart
    # Reconciled an hour ago (wall clock): the next one is due in 23 h on the monotonic clock.
    assert w.session.reconcile_at - time.monotonic() == pytest.approx(23 * 3600, abs=60)
    live = w.status_dict()
    assert live["quarantined_rows"] == 2 and live["state"] == "PAUSED"


def test_resume_after_a_401_goes_through_the_session_and_is_stored(worker: Any) -> None:
    w, ctx = worker
    reply = anyio.run(cloudcommands._cloud_resume, ctx, {})
    assert reply["resumed_from"] == "paused_unauthorised" and reply["state"] == "ACTIVE"
    assert w.session.state is SyncState.ACTIVE
    assert ctx.store.get_cloud_state()["paused"] == 0
    reply = anyio.run(cloudcommands._cloud_pause, ctx, {})
    assert reply == {"state": "PAUSED", "paused_reason": "user"}
    assert w.session.paused_reason == "user"
    assert (ctx.store.get_cloud_state()["paused"], ctx.store.get_cloud_state()["paused_reason"]) == (1, "user")


def test_monotonic_and_wall_times_convert_by_their_age() -> None:
    now_mono, now_wall = 1000.0, 1_800_000_000.0
    stamp = iso_from(now_wall - 60)
    mono = monotonic_from_iso(stamp, now_mono, now_wall)
    assert mono == pytest.approx(940.0, abs=1)
    assert iso_from_monotonic(mono, now_mono, now_wall) == stamp
    assert iso_from_monotonic(float("-inf"), now_mono, now_wall) is None


def test_the_cloud_modules_import_each_other_one_way() -> None:
    """pairing/worker -> commands -> status -> service -> link: no cycle (type-only imports aside)."""
    import ast
    import graphlib

    src = Path(cloudworker.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in src.glob("cloud*.py"):
        tree = ast.parse(path.read_text())
        type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
        graph[path.stem] = {
            (node.module or "").split(".")[0] or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in type_only
            for alias in node.names
        } & {p.stem for p in src.glob("cloud*.py")}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order.index("cloudservice") < order.index("cloudstatus") < order.index("cloudcommands")
