"""A local fake OpenAI WebSocket upstream (TLS, the `websockets` server) speaking the
real event shapes of two transports:

- `/v1/responses` (the Responses API over WebSocket, Codex CLI's default): each
  `response.create` from the client is answered with the events of
  tests/fixtures/capture/openai_responses_stream.sse, one text message each,
  ending with `response.completed` (a `generate: false` warm-up gets an empty one);
- `/v1/realtime?model=…`: `session.created` on connect, then for each
  `response.create` the events of openai_realtime.jsonl, ending with `response.done`.

`hold()` makes the server stop after the first delta of the next response until
`release()`: a test proves the client saw that frame while upstream held the rest.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from .tls import CertAuthority

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "capture"


def responses_events() -> list[str]:
    text = (FIXTURES / "openai_responses_stream.sse").read_text()
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def realtime_events() -> list[str]:
    return [line for line in (FIXTURES / "openai_realtime.jsonl").read_text().splitlines() if line.strip()]


def prewarm(events: list[str]) -> list[str]:
    """The answer to `response.create` with `generate: false` (Codex sends one before its first
    turn): `response.created` and a `response.completed` without output; the fake bills the
    prompt's input tokens only (PREWARM_USAGE), as a warm-up that reads the prompt would."""
    created = events[0]
    completed = json.loads(next(e for e in events if '"response.completed"' in e[:80]))
    completed["response"]["output"] = []
    completed["response"]["usage"] = dict(PREWARM_USAGE)
    return [created, json.dumps(completed)]


PREWARM_USAGE = {"input_tokens": 37, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 37}


class FakeWebSocketUpstream:
    def __init__(self, ca: CertAuthority) -> None:
        self.ca = ca
        self.port = 0
        self.received: list[dict[str, Any]] = []
        self._hold: threading.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"wss://localhost:{self.port}"

    def hold(self) -> None:
        self._hold = threading.Event()

    def release(self) -> None:
        if self._hold is not None:
            self._hold.set()

    async def _send_all(self, ws: Any, events: list[str]) -> None:
        gate, self._hold = self._hold, None
        for event in events:
            await ws.send(event)
            if gate is not None and '.delta"' in event[:80]:
                await asyncio.get_running_loop().run_in_executor(None, gate.wait, 20)
                gate = None

    async def _handler(self, ws: Any) -> None:
        path = ws.request.path
        realtime = path.startswith("/v1/realtime")
        events = realtime_events() if realtime else responses_events()
        if realtime:
            await ws.send(events[0])  # session.created
            events = events[1:]
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in ws:
                doc = json.loads(message)
                self.received.append(doc)
                if doc.get("type") == "response.create" and doc.get("generate") is False:
                    await self._send_all(ws, prewarm(events))  # Codex's warm-up: no output
                elif doc.get("type") == "response.create":
                    await self._send_all(ws, events)
        except ConnectionClosed:
            pass  # the client hung up mid-response (a test does so on purpose)

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        context = self.ca.server_context()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, ssl=context, compression=None) as server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            self._ready.set()
            await self._stop.wait()

    def start(self) -> FakeWebSocketUpstream:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._main())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-ws", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the fake WebSocket upstream did not start"
        return self

    def stop(self) -> None:
        self.release()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeWebSocketUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
