"""Fills the local rollups (store schema 3) with the rows written before the upgrade.

The upgrade itself only creates the table and its triggers, so opening a big
store stays quick; this component then adds the older rows a chunk at a time
(``Store.fill_rollups``: one short transaction each, a pause between them so
the writer is never held up), off the event loop. Until it is done `report`
reads the rows, as before. Once done it idles.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

log = logging.getLogger("hm_agent.rollups")

CHUNK_ROWS = 20_000
PAUSE_SECONDS = 0.05


class RollupFiller:
    name = "rollups"

    def __init__(self) -> None:
        self.pending: int | None = None
        self.filled = 0

    def should_run(self, config: Any, home: Any) -> bool:
        return True

    def health(self) -> dict[str, Any]:
        return {"pending_rows": self.pending, "filled_rows": self.filled}

    async def run(self, ctx: Any) -> None:
        from hm_agent.store import Store

        store = Store(ctx.home.db)
        try:
            self.pending = await anyio.to_thread.run_sync(store.rollups_pending)
            if self.pending:
                log.info("adding %d rows written before the upgrade to the report rollups", self.pending)
                started = time.monotonic()
                while self.pending:
                    before = self.pending
                    self.pending = await anyio.to_thread.run_sync(store.fill_rollups, CHUNK_ROWS)
                    self.filled += before - self.pending
                    await anyio.sleep(PAUSE_SECONDS)
                log.info("report rollups complete (%d rows in %.1f s)", self.filled, time.monotonic() - started)
        finally:
            store.close()
        await anyio.sleep_forever()


def make_component() -> RollupFiller:
    return RollupFiller()
