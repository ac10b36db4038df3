"""Embed hm_proto in your own code with nothing but the blocking cloud client.

Pairs this process with a Halton Meter Cloud workspace, asks who it is,
uploads three demo usage rows with ``SyncSession`` (ack-then-commit,
backoff), reconciles through the session and revokes the token. Every
protocol decision is hm_proto's; this file only moves bytes and rows, reads
the clock and sleeps::

    python examples/embed_sync.py --base-url http://127.0.0.1:8787

Open the printed URL, sign in and approve. ``--keep-token`` skips the revoke.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import secrets
import socket
import sys
import time
import uuid

from hm_proto import (
    Approved,
    BatchAccepted,
    BatchQuarantined,
    BatchRetryScheduled,
    CodeIssued,
    NeedRows,
    PairingClient,
    ProtocolError,
    ReconcileResult,
    Revoked,
    SendBatch,
    SyncSession,
    UsageRow,
    Wait,
    WhoAmI,
    parse_whoami,
    receive_revoke,
    revoke_request,
    whoami_request,
)
from hm_proto import __version__ as agent_version
from hm_proto_client import CloudClientError, SQLiteRowStore, SyncCloudClient, run_pairing


def show_code(code: CodeIssued) -> None:
    print(f"● Pairing code: {code.user_code}", flush=True)
    print(f"● Approve at: {code.verification_uri_complete}", flush=True)


def pair(client: SyncCloudClient, workspace: str | None) -> Approved:
    pairing = PairingClient(
        str(uuid.uuid4()), socket.gethostname(), platform.system(), agent_version, workspace,
        entropy=secrets.token_bytes,
    )
    try:
        outcome = run_pairing(client, pairing, show_code)  # gives up after 5 failed starts
    except KeyboardInterrupt:
        raise SystemExit("cancelled") from None
    if not isinstance(outcome, Approved):
        raise SystemExit(f"not paired: {type(outcome).__name__}; run again for a fresh code")
    return outcome


def upload(client: SyncCloudClient, session: SyncSession, store: SQLiteRowStore) -> None:
    """The SyncSession driver loop (docs/sync.md), until the store is drained."""
    while store.count_unsynced():
        now = time.monotonic()
        session.note_backlog(store.count_unsynced(), now)
        action = session.next_action(now)
        if isinstance(action, Wait):
            time.sleep(max(0.0, action.until - now))
            continue
        if not isinstance(action, NeedRows):  # Idle: paused by a 401
            raise SystemExit(f"sync stopped: {session.snapshot().paused_reason}")
        for event in session.start_batch(store.unsynced(action.limit), now):
            events = [event]
            if isinstance(event, SendBatch):
                events = session.receive(client.send(event.request), time.monotonic())
            for answered in events:
                if isinstance(answered, BatchAccepted):
                    store.mark_synced(answered.row_ids)  # ack-then-commit
                    print(f"● POST /v1/requests/batch → 200 OK ({answered.accepted} rows accepted)",
                          flush=True)
                elif isinstance(answered, BatchQuarantined):
                    store.quarantine(answered.row_ids, answered.detail)
                    print(f"  {len(answered.row_ids)} row(s) refused: {answered.detail}")
                elif isinstance(answered, BatchRetryScheduled):
                    print(f"  upload failed ({answered.reason}); retrying", flush=True)


def reconcile(client: SyncCloudClient, session: SyncSession, store: SQLiteRowStore) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    session.request_reconcile()
    send = session.start_reconcile(today, time.monotonic())
    local = store.totals_by_day(send.from_date, send.to_date)
    result = session.receive_reconcile(client.send(send.request), local, time.monotonic())
    if isinstance(result, ReconcileResult):
        store.resend_days(result.days_to_resend)
        print(
            f"● Reconcile {result.from_date}..{result.to_date}: "
            f"{'in sync' if result.in_sync else f're-send {list(result.days_to_resend)}'}"
        )
    else:
        print(f"● Reconcile: {result}")


def demo_rows(day: str) -> list[UsageRow]:
    return [
        UsageRow(
            id=str(uuid.uuid4()),
            ts=f"{day}T12:00:0{n}.000Z",
            provider="openai",
            model="gpt-4o-mini",
            endpoint="/v1/chat/completions",
            status=200,
            stream=False,
            input_tokens=100 + n,
            output_tokens=20,
            cache_read_tokens=None,
            cache_write_tokens=None,
            reasoning_tokens=None,
            cost_usd="0.0015",
            price_version="example",
            latency_ms=400,
            ttfb_ms=None,
        )
        for n in range(3)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="https://api.haltonmeter.com")
    parser.add_argument("--workspace", default=None, help="workspace slug to pre-select")
    parser.add_argument("--cafile", default=None, help="PEM CA bundle for a self-hosted backend")
    parser.add_argument("--keep-token", action="store_true", help="do not revoke at the end")
    args = parser.parse_args(argv)
    try:
        with SyncCloudClient(args.base_url, timeout=30, cafile=args.cafile) as client:
            return run(client, args.workspace, args.keep_token)
    except (CloudClientError, ProtocolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(client: SyncCloudClient, workspace: str | None, keep_token: bool) -> int:
    print(f"⠇ Requesting pairing code from {client.base_url}…", flush=True)
    approved = pair(client, workspace)
    token = approved.token
    print(f"● Paired with workspace {approved.workspace_slug}", flush=True)

    who = parse_whoami(client.send(whoami_request(token)))
    if not isinstance(who, WhoAmI):
        print(f"error: whoami failed: {who}", file=sys.stderr)
        return 1
    print(
        f"● Workspace: {who.workspace_slug}\n● Machine id: {who.machine_id}\n● Hostname: {who.hostname}"
    )

    store = SQLiteRowStore()  # in memory: a real program keeps a file
    for row in demo_rows(dt.datetime.now(dt.UTC).date().isoformat()):
        store.add(row)
    session = SyncSession(secrets.token_bytes, token=token)
    upload(client, session, store)
    reconcile(client, session, store)

    if not keep_token:
        print(f"● Revoking token at {client.base_url}…", flush=True)
        outcome = receive_revoke(client.send(revoke_request(token)))
        if not isinstance(outcome, Revoked):
            print(f"error: revoke failed ({outcome}); run again to retry", file=sys.stderr)
            return 1
        print("● Token revoked.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
