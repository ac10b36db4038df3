"""Meter OpenAI-style calls in *your own* mitmproxy and sync them with hm_proto.

    mitmdump -s examples/mitmproxy_addon.py --set hm_base_url=http://127.0.0.1:8787 \
        --set hm_workspace=acme

For each JSON answer of ``POST …/chat/completions`` (or ``/responses``,
``/completions``, ``/embeddings``) that carries a ``usage`` object, the addon
keeps one usage row (provider, model, tokens, latency: never the prompt, the
completion or the API key) in a SQLite file. A background task on
mitmproxy's own asyncio loop pairs once (the code is printed; the token is
kept in a 0600 file) and uploads the rows with ``SyncSession`` through the
async client: rows are marked synced only after the backend's 200 for their
batch (ack-then-commit), failures back off, and reconcile runs on the
session's schedule. Needs ``pip install './proto[client]'`` next to mitmproxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import secrets
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import ctx, http

from hm_proto import (
    Approved,
    BatchAccepted,
    CodeIssued,
    PairingClient,
    SyncEvent,
    SyncSession,
    UsageRow,
)
from hm_proto_client import AsyncCloudClient, SQLiteRowStore, run_pairing_async, run_sync_async

log = logging.getLogger("hm_meter")
METERED_PATHS = ("/chat/completions", "/responses", "/completions", "/embeddings")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_row(flow: http.HTTPFlow) -> UsageRow | None:
    """The usage row of one metered call, or None if it is not one."""
    request, response = flow.request, flow.response
    if response is None or request.method != "POST" or not request.path.split("?")[0].endswith(METERED_PATHS):
        return None
    try:
        body = json.loads(response.get_text(strict=False) or "")
    except ValueError:
        return None
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    started, ended = request.timestamp_start, response.timestamp_end or response.timestamp_start
    return UsageRow(
        id=str(uuid.uuid4()),
        ts=datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        provider="openai",
        model=str(body.get("model") or "unknown")[:200],
        endpoint=request.path.split("?")[0][:200],
        status=response.status_code,
        stream=False,
        input_tokens=_count(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output_tokens=_count(usage.get("completion_tokens", usage.get("output_tokens"))),
        cache_read_tokens=None,
        cache_write_tokens=None,
        reasoning_tokens=None,
        cost_usd=None,  # price it with your own price list, or leave it unknown
        price_version="none",
        latency_ms=max(0, round(((ended or started) - started) * 1000)),
        ttfb_ms=None,
    )


class HaltonMeterSync:
    def __init__(self) -> None:
        self.store: SQLiteRowStore | None = None
        self.task: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("hm_base_url", str, "", "Halton Meter Cloud base URL")
        loader.add_option("hm_workspace", str, "", "workspace slug to pre-select when pairing")
        loader.add_option("hm_dir", str, "~/.hm-mitm", "where the rows and the token are kept")

    def running(self) -> None:
        home = Path(os.path.expanduser(ctx.options.hm_dir))
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = SQLiteRowStore(home / "rows.sqlite")
        if ctx.options.hm_base_url:
            self.task = asyncio.get_running_loop().create_task(self.sync(home))
        else:
            log.warning("hm_base_url is not set: rows are kept locally only")

    def response(self, flow: http.HTTPFlow) -> None:
        row = usage_row(flow)
        if row is not None and self.store is not None:
            self.store.add(row)  # the background task uploads it within its flush interval

    async def done(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def sync(self, home: Path) -> None:
        assert self.store is not None
        token_file = home / "token"
        async with AsyncCloudClient(ctx.options.hm_base_url) as client:
            token = token_file.read_text().strip() if token_file.exists() else ""
            if not token:
                token = await self.pair(client, token_file)
            session = SyncSession(secrets.token_bytes, token=token)
            status = await run_sync_async(client, session, self.store, on_event=self.report)
        log.error("hm sync stopped (%s): delete %s and restart to pair again", status.paused_reason, token_file)

    async def pair(self, client: AsyncCloudClient, token_file: Path) -> str:
        pairing = PairingClient(
            str(uuid.uuid4()), socket.gethostname(), platform.system(), "mitmproxy-addon",
            ctx.options.hm_workspace or None, entropy=secrets.token_bytes,
        )

        def show(code: CodeIssued) -> None:
            print(f"● Pairing code: {code.user_code} (approve at {code.verification_uri_complete})", flush=True)

        outcome = await run_pairing_async(client, pairing, show)
        if not isinstance(outcome, Approved):
            raise RuntimeError(f"not paired ({type(outcome).__name__}); restart for a new code")
        token_file.touch(mode=0o600)
        token_file.write_text(outcome.token)
        print(f"● Paired with workspace {outcome.workspace_slug}", flush=True)
        return outcome.token

    @staticmethod
    def report(event: SyncEvent) -> None:
        if isinstance(event, BatchAccepted):
            print(f"● uploaded {event.accepted} row(s) ({event.duplicates} duplicates)", flush=True)


addons = [HaltonMeterSync()]
