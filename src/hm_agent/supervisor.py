"""The supervisor: starts the components that should run, stops the ones that should not.

A component is any object with::

    name: str
    def should_run(self, config: Config, home: Path) -> bool: ...
    async def run(self, ctx: DaemonContext) -> None: ...     # runs until cancelled
    def health(self) -> dict: ...                            # optional, shown by status

The supervisor ticks at most every ``tick_seconds`` (15 s; tests set
``HALTON_METER_TICK_SECONDS``), re-reading config.toml if it changed, so a
component that a CLI command just enabled (e.g. the cloud worker after
``cloud connect``) starts on the next tick; the ``wake`` control command
ticks at once. A component that crashes is restarted on a later tick and
its error is shown by ``status``.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

log = logging.getLogger("hm_agent.supervisor")

DEFAULT_TICK_SECONDS = 15.0
TICK_ENV = "HALTON_METER_TICK_SECONDS"

# Where components come from: (module, factory). A missing module is skipped,
# so the daemon runs before the cloud worker exists. Add a component here.
COMPONENT_SOURCES: list[tuple[str, str]] = [
    ("hm_agent.cloudworker", "make_component"),
    ("hm_agent.cloudpairing", "make_pairing_component"),
    ("hm_agent.outputs", "make_component"),
    ("hm_agent.metrics", "make_component"),
    ("hm_agent.otel", "make_component"),
    ("hm_agent.rollups", "make_component"),
    ("hm_agent.retention", "make_component"),
    ("hm_agent.bodysync", "make_component"),
]


class Component(Protocol):
    name: str

    def should_run(self, config: Any, home: Any) -> bool: ...

    async def run(self, ctx: Any) -> None: ...


def tick_seconds() -> float:
    try:
        value = float(os.environ.get(TICK_ENV, DEFAULT_TICK_SECONDS))
    except ValueError:
        return DEFAULT_TICK_SECONDS
    return min(max(value, 0.05), DEFAULT_TICK_SECONDS)


def load_components() -> list[Any]:
    found: list[Any] = []
    for module_name, factory_name in COMPONENT_SOURCES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not written yet / not installed
            log.exception("component module %s failed to import", module_name)
            continue
        except Exception:
            log.exception("component module %s failed to import", module_name)
            continue
        try:
            found.append(getattr(module, factory_name)())
        except Exception:
            log.exception("component factory %s.%s failed", module_name, factory_name)
    return found


@dataclass
class _Running:
    scope: anyio.CancelScope
    state: str = "starting"  # starting | running | stopped | crashed
    since: float = field(default_factory=time.time)
    error: str | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, components: list[Any], tick: float | None = None) -> None:
        self.components = components
        self.tick_seconds = tick if tick is not None else tick_seconds()
        self._status: dict[str, _Running] = {}
        self._wake = anyio.Event()
        self.ticks = 0
        self.last_tick_at: float | None = None

    def wake(self) -> None:
        """Tick now instead of waiting (the `wake` control command)."""
        self._wake.set()

    async def run(self, ctx: Any) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                ctx.reload_config_if_changed()
                self._tick(ctx, tg)
                with anyio.move_on_after(self.tick_seconds):
                    await self._wake.wait()
                self._wake = anyio.Event()

    def _tick(self, ctx: Any, tg: anyio.abc.TaskGroup) -> None:
        self.ticks += 1
        self.last_tick_at = time.time()
        for comp in self.components:
            try:
                want = bool(comp.should_run(ctx.config, ctx.home.home))
            except Exception as exc:
                log.exception("%s.should_run failed", comp.name)
                want = False
                self._status.setdefault(comp.name, _Running(anyio.CancelScope(), state="stopped")).error = (
                    f"should_run failed: {exc}"
                )
            current = self._status.get(comp.name)
            active = current is not None and current.state in ("starting", "running")
            if want and not active:
                restarts = 0 if current is None else current.restarts + (current.state == "crashed")
                entry = _Running(anyio.CancelScope(), restarts=restarts)
                if current is not None and current.state == "crashed":
                    entry.error = current.error
                self._status[comp.name] = entry
                tg.start_soon(self._run_component, comp, entry, ctx)
            elif not want and active:
                assert current is not None
                log.info("stopping component %s", comp.name)
                current.scope.cancel()

    async def _run_component(self, comp: Any, entry: _Running, ctx: Any) -> None:
        log.info("starting component %s", comp.name)
        with entry.scope:
            entry.state, entry.since = "running", time.time()
            try:
                await comp.run(ctx)
            except Exception as exc:
                log.exception("component %s crashed; restarting on a later tick", comp.name)
                entry.state, entry.since, entry.error = "crashed", time.time(), f"{type(exc).__name__}: {exc}"
                return
        if entry.state != "crashed":
            entry.state, entry.since = "stopped", time.time()

    def health(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for comp in self.components:
            entry = self._status.get(comp.name)
            info: dict[str, Any] = {
                "state": "stopped" if entry is None else entry.state,
                "since": None if entry is None else entry.since,
                "error": None if entry is None else entry.error,
                "restarts": 0 if entry is None else entry.restarts,
            }
            health = getattr(comp, "health", None)
            # A stopped component's own view is stale (the cloud worker would say
            # ACTIVE while cloud.state is NOT-CONFIGURED): show it only while it runs.
            if callable(health) and info["state"] != "stopped":
                try:
                    info["detail"] = health()
                except Exception as exc:
                    info["detail"] = {"error": f"health() failed: {exc}"}
            out[comp.name] = info
        return out
