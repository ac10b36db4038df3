"""A trio program that meters into a local SQLite file and syncs it with SyncSession.

Pairs once (the token is kept in a 0600 file), adds ``--rows`` demo usage
rows, and uploads everything with ``hm_proto``'s SyncSession through the
async client: ack-then-commit, backoff while the backend is down (it
survives a backend restart), and the reconcile the session schedules.
Needs only ``pip install './proto[client]' trio``::

    python examples/trio_sync.py --base-url http://127.0.0.1:8787 --workspace acme --rows 3
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import socket
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import trio

from hm_proto import (
    Approved,
    BatchAccepted,
    BatchRetryScheduled,
    PairingClient,
    SyncEvent,
    SyncSession,
    UsageRow,
)
from hm_proto_client import AsyncCloudClient, SQLiteRowStore, run_pairing_async, run_sync_async


def demo_row(n: int) -> UsageRow:
    return UsageRow(
        id=str(uuid.uuid4()), ts=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        provider="openai", model="gpt-4o-mini", endpoint="/v1/chat/completions", status=200,
        stream=False, input_tokens=100 + n, output_tokens=20, cache_read_tokens=0,
        cache_write_tokens=0, reasoning_tokens=0, cost_usd="0.000027", price_version="demo",
        latency_ms=350, ttfb_ms=None,
    )


async def pair(client: AsyncCloudClient, workspace: str | None, token_file: Path) -> str:
    pairing = PairingClient(
        str(uuid.uuid4()), socket.gethostname(), platform.system(), "trio-example", workspace,
        entropy=secrets.token_bytes,
    )

    def show(code: object) -> None:
        print(f"● Pairing code: {code.user_code}", flush=True)  # type: ignore[attr-defined]
        print(f"● Approve at: {code.verification_uri_complete}", flush=True)  # type: ignore[attr-defined]

    outcome = await run_pairing_async(client, pairing, show)
    if not isinstance(outcome, Approved):
        raise SystemExit(f"not paired ({type(outcome).__name__}): run again for a new code")
    token_file.touch(mode=0o600)
    token_file.write_text(outcome.token)
    print(f"● Paired with workspace {outcome.workspace_slug}", flush=True)
    return outcome.token


def report(event: SyncEvent) -> None:
    if isinstance(event, BatchAccepted):
        print(f"● POST /v1/requests/batch → 200 ({event.accepted} new, {event.duplicates} duplicates)", flush=True)
    elif isinstance(event, BatchRetryScheduled):
        print(f"  retrying (attempt {event.attempt}): {event.reason}", flush=True)


async def main(args: argparse.Namespace) -> int:
    store = SQLiteRowStore(args.db)
    for n in range(args.rows):
        store.add(demo_row(n))
    async with AsyncCloudClient(args.base_url, timeout=10) as client:
        token = args.token_file.read_text().strip() if args.token_file.exists() else None
        token = token or await pair(client, args.workspace, args.token_file)
        session = SyncSession(secrets.token_bytes, token=token)
        status = await run_sync_async(client, session, store, until_drained=True, on_event=report)
    if status.paused_reason:
        print(f"sync paused ({status.paused_reason}): delete {args.token_file} and pair again", file=sys.stderr)
        return 1
    print(f"● {store.count_synced()} rows in the cloud, {store.count_unsynced()} waiting", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--workspace")
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--db", default="meter-rows.sqlite")
    parser.add_argument("--token-file", type=Path, default=Path("meter-token"))
    os.umask(0o077)
    raise SystemExit(trio.run(main, parser.parse_args()))
