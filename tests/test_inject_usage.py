"""`[capture] inject_stream_usage`: a streamed OpenAI chat call that did not ask
for usage is recorded exactly, and the client (the official openai SDK) sees
the very stream it would have seen without the meter: the same lines in the
same order, with no `usage` anywhere.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from hm_agent.capture.inject import UsageChunkStripper, inject_include_usage

from .support.daemon import Daemon, capture_host_config, running_daemon
from .support.fake_providers import FakeProviders
from .support.tls import make_ca
from .test_capture_parsers import EXPECTED

FIXTURES = Path(__file__).parent / "fixtures" / "capture"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


# -- the stream editor, without a proxy ------------------------------------------------

@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_stripper_turns_the_usage_stream_into_the_plain_one(size: int, newline: str) -> None:
    with_usage = (FIXTURES / "openai_chat_stream.sse").read_bytes().replace(b"\n", newline.encode())
    plain = (FIXTURES / "openai_chat_stream_no_usage.sse").read_bytes().replace(b"\n", newline.encode())
    strip = UsageChunkStripper()
    out = b"".join(strip(with_usage[i:i + size]) for i in range(0, len(with_usage), size)) + strip(b"")
    assert out == plain


def test_stripper_hands_on_each_whole_event_at_once() -> None:
    strip = UsageChunkStripper()
    first, second = b'data: {"choices":[{"delta":{}}],"usage":null}\n\n', b'data: {"choices":[{"delta":{"content":"x"}}]'
    assert strip(first + second) == b'data: {"choices":[{"delta":{}}]}\n\n'
    assert strip(b"}\n\n") == second + b"}\n\n"


def test_request_injection_respects_what_the_client_said() -> None:
    def body(doc: dict[str, Any]) -> bytes:
        return json.dumps(doc).encode()

    out = inject_include_usage(body({"model": "m", "stream": True, "stream_options": {"x": 1}}))
    assert out is not None and json.loads(out)["stream_options"] == {"x": 1, "include_usage": True}
    for doc in ({"model": "m", "stream": True, "stream_options": {"include_usage": False}},
                {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
                {"model": "m", "stream": False}, {"model": "m"}):
        assert inject_include_usage(body(doc)) is None
    assert inject_include_usage(b"not json") is None and inject_include_usage(b"[1]") is None


# -- end to end: the official SDK through a real daemon ----------------------------------

@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProviders]:
    ca = make_ca(tmp_path_factory.mktemp("ca"))
    with FakeProviders(ca) as fake:
        yield fake


def _daemon(tmp: Path, upstream: FakeProviders, inject: bool) -> Any:
    extra = f"[capture]\ninject_stream_usage = {str(inject).lower()}\n"
    extra += capture_host_config([f"localhost:{upstream.port}"])
    return running_daemon(tmp, upstream_ca=upstream.ca.ca_path, extra_config=extra)


def _observe(d: Daemon, upstream: FakeProviders, **options: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(raw SSE lines the SDK received, parsed chunks) for one streamed chat call."""
    trust = ssl.create_default_context(cafile=str(d.ca_cert_path))
    client = openai.OpenAI(api_key="sk-proj-injectSECRET0123456789", base_url=f"{upstream.base_url}/v1",
                           http_client=httpx.Client(proxy=d.proxy_url, verify=trust, timeout=20), max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, **options,
    ) as response:
        lines = list(response.iter_lines())
    chunks = [c.model_dump(exclude_unset=True) for c in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, **options)]
    return lines, chunks


def _rows(d: Daemon, n: int) -> list[dict[str, Any]]:
    assert d.wait_rows(n, timeout=15) >= n
    time.sleep(0.2)
    with sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY ts")]


@pytest.mark.slow
def test_the_client_sees_the_same_stream_and_the_row_is_exact(tmp_path: Path, upstream: FakeProviders) -> None:
    observed = {}
    for inject in (False, True):
        with _daemon(tmp_path / f"home-{inject}", upstream, inject) as d:
            upstream.seen.clear()
            observed[inject] = _observe(d, upstream)
            asked = [s.body.get("stream_options") for s in upstream.seen]
            rows = _rows(d, 2)
        assert len(rows) == 2
        if inject:
            assert asked == [{"include_usage": True}] * 2
            spec = EXPECTED["openai_chat_stream.sse"]
            for row in rows:
                assert {t: row[t] for t in TOKENS} == {t: spec[t] for t in TOKENS}
                assert row["flags"] == "" and row["cost_usd"] is not None
        else:
            assert asked == [None, None]
            assert all(r["input_tokens"] is None and r["flags"] == "usage_missing" for r in rows)
    (lines_off, chunks_off), (lines_on, chunks_on) = observed[False], observed[True]
    assert lines_on == lines_off
    assert chunks_on == chunks_off
    assert len(chunks_on) == 5 and not any("usage" in line for line in lines_on)


@pytest.mark.slow
def test_a_client_that_asked_is_left_alone(tmp_path: Path, upstream: FakeProviders) -> None:
    with _daemon(tmp_path / "home", upstream, True) as d:
        upstream.seen.clear()
        lines, chunks = _observe(d, upstream, stream_options={"include_usage": True})
        assert chunks[-1]["usage"]["prompt_tokens"] == 2006 and chunks[-1]["choices"] == []
        lines_false, _ = _observe(d, upstream, stream_options={"include_usage": False})
        assert [s.body.get("stream_options") for s in upstream.seen] == \
            [{"include_usage": True}] * 2 + [{"include_usage": False}] * 2
        assert not any("usage" in line for line in lines_false)
        rows = _rows(d, 4)
    assert [r["input_tokens"] for r in rows] == [2006, 2006, None, None]
