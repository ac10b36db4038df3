"""An asyncio ASGI gateway for OpenAI-style APIs that meters every call and syncs it.

    HM_BASE_URL=http://127.0.0.1:8787 UPSTREAM_URL=https://api.openai.com \\
        uvicorn asyncio_gateway:app --app-dir examples --port 8000

Programs send their OpenAI calls to ``http://127.0.0.1:8000/v1`` instead of
the provider; the gateway forwards each ``POST`` upstream (one keep-alive
connection, the caller's API key passed through and never stored), answers
with the upstream's reply, and keeps one usage row per call in SQLite. A task
started with the app pairs once (code printed, token in a 0600 file) and
uploads the rows with ``SyncSession`` (``run_sync_async``): ack-then-commit,
backoff while the backend is down, so it survives a backend restart.
Plain ASGI: any server runs it (uvicorn, hypercorn). ``UPSTREAM_CAFILE``
trusts a private CA for the upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hm_proto import (
    Approved,
    BatchAccepted,
    BatchRetryScheduled,
    PairingClient,
    Request,
    Response,
    SyncEvent,
    SyncSession,
    UsageRow,
)
from hm_proto_client import AsyncCloudClient, SQLiteRowStore, run_pairing_async, run_sync_async

MAX_BODY = 1 << 20
FORWARDED = ("authorization", "content-type", "accept", "openai-organization", "openai-project")
HOME = Path(os.environ.get("HM_DIR", "hm-gateway")).expanduser()
HOME.mkdir(mode=0o700, parents=True, exist_ok=True)
store = SQLiteRowStore(HOME / "rows.sqlite")
upstream = AsyncCloudClient(os.environ["UPSTREAM_URL"], cafile=os.environ.get("UPSTREAM_CAFILE"))

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def say(text: str) -> None:
    print(text, flush=True)


def record(path: str, answer: Response, started: float) -> None:
    try:
        body = json.loads(answer.body or b"null")
    except ValueError:
        return
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return
    tokens = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
    store.add(UsageRow(
        id=str(uuid.uuid4()), ts=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        provider="openai", model=str(body.get("model") or "unknown")[:200], endpoint=path[:200],
        status=answer.status, stream=False, input_tokens=tokens.get("prompt_tokens"),
        output_tokens=tokens.get("completion_tokens"), cache_read_tokens=None, cache_write_tokens=None,
        reasoning_tokens=None, cost_usd=None, price_version="none",
        latency_ms=round((time.monotonic() - started) * 1000), ttfb_ms=None,
    ))


async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            await reply(send, 413, b'{"error":"request body over 1 MiB"}')
            return
        if not message.get("more_body"):
            break
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                    if k.decode("latin-1").lower() in FORWARDED)
    target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
    started = time.monotonic()
    answer = await upstream.send(Request(scope["method"], target, headers, body), timeout=120)
    if not isinstance(answer, Response):
        await reply(send, 502, json.dumps({"error": f"upstream: {answer.kind}"}).encode())
        return
    if scope["method"] == "POST":
        record(scope["path"], answer, started)
    await reply(send, answer.status, answer.body, answer.header("Content-Type") or "application/json")


async def reply(send: Send, status: int, body: bytes, content_type: str = "application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode("latin-1"))]})
    await send({"type": "http.response.body", "body": body})


def report(event: SyncEvent) -> None:
    if isinstance(event, BatchAccepted):
        say(f"● uploaded {event.accepted} row(s) ({event.duplicates} duplicates)")
    elif isinstance(event, BatchRetryScheduled):
        say(f"  retrying (attempt {event.attempt}): {event.reason}")


async def sync_forever() -> None:
    token_file = HOME / "token"
    async with AsyncCloudClient(os.environ["HM_BASE_URL"]) as cloud:
        token = token_file.read_text().strip() if token_file.exists() else ""
        if not token:
            pairing = PairingClient(str(uuid.uuid4()), socket.gethostname(), platform.system(),
                                    "asyncio-gateway", os.environ.get("HM_WORKSPACE"),
                                    entropy=secrets.token_bytes)
            outcome = await run_pairing_async(
                cloud, pairing, lambda code: say(f"● Pairing code: {code.user_code}"))
            if not isinstance(outcome, Approved):
                say(f"not paired ({type(outcome).__name__}): restart for a new code")
                return
            token = outcome.token
            token_file.touch(mode=0o600)
            token_file.write_text(token)
            say(f"● Paired with workspace {outcome.workspace_slug}")
        session = SyncSession(secrets.token_bytes, token=token)
        status = await run_sync_async(cloud, session, store, on_event=report)
        say(f"sync stopped ({status.paused_reason}): delete {token_file} and restart to pair again")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        task: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                task = asyncio.get_running_loop().create_task(sync_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if task is not None:
                    task.cancel()
                await upstream.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await proxy(scope, receive, send)
