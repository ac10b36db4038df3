"""Embed hm_proto in your own code with nothing but the blocking cloud client.

Pairs this process with a Halton Meter Cloud workspace, asks who it is,
uploads three demo usage rows, reconciles the last 7 days and revokes the
token. Every protocol decision is hm_proto's; this file only moves bytes,
reads the clock and sleeps::

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
from decimal import Decimal

from hm_proto import (
    Approved,
    BatchBuilder,
    CodeIssued,
    PairingClient,
    ProtocolError,
    Reconciler,
    ReconcileResult,
    Response,
    RetryScheduled,
    Revoked,
    UsageRow,
    WhoAmI,
    parse_whoami,
    receive_revoke,
    revoke_request,
    whoami_request,
)
from hm_proto import __version__ as agent_version
from hm_proto_client import CloudClientError, SyncCloudClient


def pair(client: SyncCloudClient, machine_id: str, workspace: str | None) -> Approved:
    pairing = PairingClient(
        machine_id, socket.gethostname(), platform.system(), agent_version, workspace
    )
    for _attempt in range(5):  # ask for a code; retry a few times while the cloud is unreachable
        event = pairing.receive_start(client.send(pairing.start_request()), time.monotonic())
        if not isinstance(event, RetryScheduled):
            break
        print(f"  cloud not reachable ({event.reason}); retrying", file=sys.stderr)
        time.sleep(max(0.0, event.retry_at - time.monotonic()))
    if isinstance(event, RetryScheduled):
        raise SystemExit(f"cannot reach the cloud ({event.reason}): check --base-url and the network")
    if not isinstance(event, CodeIssued):
        raise SystemExit(f"pairing refused: {event}")
    print(f"● Pairing code: {event.user_code}", flush=True)
    print(f"● Approve at: {event.verification_uri_complete}", flush=True)
    try:
        while not pairing.is_done:
            request = pairing.next_poll(time.monotonic())
            if request is None:  # not due yet: sleep until hm_proto says so
                deadline = pairing.next_deadline()
                if deadline is not None:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                continue
            answer = client.send(request, timeout=pairing.poll_timeout)
            pairing.receive_poll(answer, time.monotonic())
    except KeyboardInterrupt:
        pairing.cancel()
        raise SystemExit("cancelled") from None
    if not isinstance(pairing.outcome, Approved):
        raise SystemExit(f"not paired: {pairing.outcome}; run again for a fresh code")
    return pairing.outcome


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
    approved = pair(client, str(uuid.uuid4()), workspace)
    token = approved.token
    print(f"● Paired with workspace {approved.workspace_slug}", flush=True)

    who = parse_whoami(client.send(whoami_request(token)))
    if not isinstance(who, WhoAmI):
        print(f"error: whoami failed: {who}", file=sys.stderr)
        return 1
    print(
        f"● Workspace: {who.workspace_slug}\n● Machine id: {who.machine_id}\n● Hostname: {who.hostname}"
    )

    today = dt.datetime.now(dt.UTC).date().isoformat()
    rows = demo_rows(today)
    for batch in BatchBuilder().build(
        [(row.id, row.to_json()) for row in rows], secrets.token_bytes
    ):
        answer = client.send(batch.to_request(token))
        shown = answer.body.decode(errors="replace") if isinstance(answer, Response) else answer
        status = answer.status if isinstance(answer, Response) else "failed"
        print(f"● POST /v1/requests/batch → {status} {shown}", flush=True)

    reconciler = Reconciler.last_days(today, 7)
    local_cost = sum((Decimal(row.cost_usd or 0) for row in rows), Decimal(0))
    result = reconciler.receive_totals(
        client.send(reconciler.totals_request(token)), {today: (len(rows), str(local_cost))}
    )
    if isinstance(result, ReconcileResult):
        print(
            f"● Reconcile {result.from_date}..{result.to_date}: "
            f"{'in sync' if result.in_sync else f're-send {list(result.days_to_resend)}'}"
        )
    else:
        print(f"● Reconcile: {result}")

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
