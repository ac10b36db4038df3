"""WebSocket LLM traffic through a real daemon: the OpenAI Responses API over
WebSocket (Codex CLI's transport) and the Realtime API, with the `websockets`
client through the proxy to a fake upstream speaking the real event shapes.
One row per response, exact usage (Realtime audio tokens priced as audio),
frames passed on one by one, and a response cut off by a close kept as incomplete.
"""

from __future__ import annotations

import json
import os
import pwd
import ssl
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from websockets.sync.client import ClientConnection, connect

from .support.daemon import Daemon, daemon_metering
from .support.fake_ws import FakeWebSocketUpstream
from .test_capture_parsers import EXPECTED

pytestmark = pytest.mark.slow

TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, FakeWebSocketUpstream]]:
    with daemon_metering(tmp_path_factory.mktemp("ws"), FakeWebSocketUpstream) as (daemon, upstream):
        yield daemon, upstream


def client(daemon: Daemon, url: str, **headers: str) -> ClientConnection:
    trust = ssl.create_default_context(cafile=str(daemon.ca_cert_path))
    return connect(url, proxy=daemon.proxy_url, ssl=trust, open_timeout=20,
                   additional_headers={"Authorization": "Bearer sk-proj-wsSECRET0123456789", **headers})


def rows(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.rows()  # in the order they were written


def new_rows(daemon: Daemon, before: int, n: int) -> list[dict[str, Any]]:
    assert daemon.wait_rows(before + n, timeout=15) >= before + n
    time.sleep(0.3)  # and no more than n
    got = rows(daemon)[before:]
    assert len(got) == n, got
    return got


def until(ws: ClientConnection, event_type: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        event = json.loads(ws.recv(timeout=20))
        seen.append(event)
        if event["type"] == event_type:
            return seen


def test_responses_over_websocket_one_row_per_response(rig: tuple[Daemon, FakeWebSocketUpstream]) -> None:
    daemon, upstream = rig
    before = len(rows(daemon))
    with client(daemon, f"{upstream.base_url}/v1/responses") as ws:
        for _ in range(2):
            ws.send(json.dumps({"type": "response.create", "model": "o4-mini", "input": "hi"}))
            events = until(ws, "response.completed")
            assert events[0]["type"] == "response.created" and len(events) == 10
    spec = EXPECTED["openai_responses_stream.sse"]
    got = new_rows(daemon, before, 2)
    want_cost = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=spec["input_tokens"], output_tokens=spec["output_tokens"],
                           cache_read_tokens=spec["cache_read_tokens"]), spec["model"], provider_id="openai",
    ).total_price
    for row in got:
        assert {t: row[t] for t in TOKENS} == {t: spec[t] for t in TOKENS}
        assert (row["model"], row["endpoint"], row["stream"], row["status"], row["flags"]) == \
            (spec["model"], "/v1/responses", 1, 200, "")
        assert Decimal(row["cost_usd"]) == want_cost
        assert row["latency_ms"] >= row["ttfb_ms"] >= 0
        assert row["os_user"] == pwd.getpwuid(os.getuid()).pw_name  # attributed to this process
    secret = b"wsSECRET"
    assert not any(secret in p.read_bytes() for p in daemon.home.rglob("*") if p.is_file())


def test_a_websocket_session_takes_the_project_header(rig: tuple[Daemon, FakeWebSocketUpstream]) -> None:
    daemon, upstream = rig
    before = len(rows(daemon))
    with client(daemon, f"{upstream.base_url}/v1/responses", **{"X-Halton-Project": "voice-bot"}) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "o4-mini", "input": "hi"}))
        until(ws, "response.completed")
    (row,) = new_rows(daemon, before, 1)
    assert (row["project"], row["flags"]) == ("voice-bot", "")


def test_realtime_response_done_with_audio_tokens(rig: tuple[Daemon, FakeWebSocketUpstream]) -> None:
    daemon, upstream = rig
    before = len(rows(daemon))
    with client(daemon, f"{upstream.base_url}/v1/realtime?model=gpt-realtime") as ws:
        assert json.loads(ws.recv(timeout=20))["type"] == "session.created"
        ws.send(json.dumps({"type": "response.create"}))
        done = until(ws, "response.done")[-1]
    usage = done["response"]["usage"]
    (row,) = new_rows(daemon, before, 1)
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (132, 121, 64)
    assert (row["model"], row["endpoint"], row["flags"]) == ("gpt-realtime-2025-08-28", "/v1/realtime", "")
    audio = genai_prices.calc_price(genai_prices.Usage(
        input_tokens=132, output_tokens=121, cache_read_tokens=64,
        input_audio_tokens=usage["input_token_details"]["audio_tokens"],
        output_audio_tokens=usage["output_token_details"]["audio_tokens"], cache_audio_read_tokens=0,
    ), "gpt-realtime-2025-08-28", provider_id="openai").total_price
    text_only = genai_prices.calc_price(genai_prices.Usage(input_tokens=132, output_tokens=121, cache_read_tokens=64),
                                        "gpt-realtime-2025-08-28", provider_id="openai").total_price
    assert Decimal(row["cost_usd"]) == audio != text_only


def test_frames_pass_one_by_one_and_a_cut_response_is_incomplete(
    rig: tuple[Daemon, FakeWebSocketUpstream],
) -> None:
    daemon, upstream = rig
    before = len(rows(daemon))
    upstream.hold()
    try:
        with client(daemon, f"{upstream.base_url}/v1/responses") as ws:
            ws.send(json.dumps({"type": "response.create", "model": "o4-mini", "input": "hi"}))
            seen = until(ws, "response.output_text.delta")  # upstream holds everything after this frame
            assert [e["type"] for e in seen][0] == "response.created"
    finally:
        upstream.release()
    (row,) = new_rows(daemon, before, 1)
    assert row["flags"] == "incomplete" and row["input_tokens"] is None and row["cost_usd"] is None
    assert Path(daemon.db_path).exists()
