"""What the daemon does with rows once they are written: budgets, alerts, metrics.

``Outputs`` owns the row feed (``hm_agent.rowfeed``) and its listeners, the
alert thread, and the ``budget.*`` control commands; the daemon creates one,
hooks :meth:`Outputs.poll` after each writer commit and gives the tracker to
the addon (which refuses calls a block budget covers). The ``budgets``
supervisor component polls every few seconds too, so a period that rolls
over, or a snooze that ends, takes effect on an idle daemon.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from .alerts import AlertSender
from .budgets import BudgetTracker
from .control import command
from .metrics import MetricsListener
from .rowfeed import RowFeed

log = logging.getLogger("hm_agent.outputs")

POLL_SECONDS = 5.0


class Outputs:
    def __init__(self, hp: Any, config: Any, machine_id: str) -> None:
        self.home = hp
        self.feed = RowFeed(hp.db)
        self.alerts = AlertSender(hp.db, config.alert_webhooks, machine_id, socket.gethostname())
        self.tracker = BudgetTracker(config.budgets, on_alert=self.alerts.submit)
        self.feed.listeners.append(self.tracker)
        self.metrics = MetricsListener()
        self.feed.listeners.append(self.metrics)
        self.alerts.start()
        # The first count of each budget reads its whole period (a month can be 10^5
        # rows, ~1 s): off the start path. Blocks apply once it is done.
        threading.Thread(target=self.poll, name="hm-budgets-first-count", daemon=True).start()

    def poll(self) -> None:
        self.feed.poll()

    def reload(self, config: Any) -> None:
        self.alerts.webhooks = list(config.alert_webhooks)
        self.tracker.configure(config.budgets)

    def budgets(self) -> list[dict[str, Any]]:
        return self.tracker.snapshot(self.feed_snoozes())

    def feed_snoozes(self) -> dict[str, float]:
        try:
            return dict(self.feed._store.budget_snoozes())
        except Exception:
            return {}

    def status(self) -> dict[str, Any]:
        return {"budgets": self.budgets(), "blocked_calls": self.tracker.blocked_calls,
                "alerts": self.alerts.health()}

    def stop(self) -> None:
        self.alerts.stop()
        self.feed.close()


class BudgetsComponent:
    """Polls the feed on the supervisor's loop (periods roll over on an idle daemon)."""

    name = "budgets"

    def should_run(self, config: Any, home: Any) -> bool:
        return bool(config.budgets)

    async def run(self, ctx: Any) -> None:
        import anyio

        outputs: Outputs | None = getattr(ctx, "outputs", None)
        if outputs is None:
            return
        while True:
            await anyio.to_thread.run_sync(outputs.poll)
            await anyio.sleep(POLL_SECONDS)


def make_component() -> BudgetsComponent:
    return BudgetsComponent()


def _outputs(ctx: Any) -> Outputs:
    outputs: Outputs | None = getattr(ctx, "outputs", None)
    if outputs is None:
        raise RuntimeError("this daemon has no budgets; run `halton-meter restart`")
    return outputs


@command("budget.refresh")
async def _refresh(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Re-read config.toml and the snoozes, recount, and answer the budgets' state."""
    import anyio

    outputs = _outputs(ctx)
    ctx.reload_config_if_changed()
    await anyio.to_thread.run_sync(outputs.poll)
    return {"budgets": outputs.budgets()}
