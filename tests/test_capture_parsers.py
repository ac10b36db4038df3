"""Unit tests of the capture taps: every dialect x streamed/not, from the
providers' documented examples (tests/fixtures/capture/)."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import brotli
import pytest
import zstandard

from hm_agent.capture import CapturedUsage, open_call

FIXTURES = Path(__file__).parent / "fixtures" / "capture"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())
HOST_FOR_PROVIDER = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "google": "generativelanguage.googleapis.com",
}
TOKEN_FIELDS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
)


def encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "br":
        return brotli.compress(body)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    return body


def run(
    name: str,
    chunks: list[bytes] | None = None,
    *,
    encoding: str = "",
    complete: bool = True,
    status: int = 200,
    host: str | None = None,
    config: Any = None,
) -> CapturedUsage:
    spec = EXPECTED[name]
    body = (FIXTURES / name).read_bytes()
    tap = open_call(
        host or HOST_FOR_PROVIDER[spec["provider"]], "POST", spec["path"], spec.get("query", ""),
        {"content-type": "application/json", "authorization": "Bearer sk-test"},
        json.dumps(spec["request"]).encode(), config,
    )
    assert tap is not None
    content_type = "text/event-stream" if name.endswith(".sse") else "application/json"
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    tap.response_headers(status, headers)
    for chunk in chunks if chunks is not None else [encode(body, encoding)]:
        tap.feed(chunk)
    return tap.finish(complete=complete)


def assert_matches(usage: CapturedUsage, name: str) -> None:
    spec = EXPECTED[name]
    got = {f: getattr(usage, f) for f in TOKEN_FIELDS}
    want = {f: spec[f] for f in TOKEN_FIELDS}
    assert got == want
    assert usage.model == spec["model"]
    assert usage.provider == spec["provider"]
    assert usage.stream is spec["stream"]
    assert usage.flags == frozenset(spec.get("flags", []))
    if "cache_write_1h_tokens" in spec:
        assert usage.cache_write_1h_tokens == spec["cache_write_1h_tokens"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_usage_whole_body(name: str) -> None:
    assert_matches(run(name), name)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_usage_content_encoded(name: str, encoding: str) -> None:
    assert_matches(run(name, encoding=encoding), name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_usage_byte_by_byte(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    assert_matches(run(name, [body[i : i + 1] for i in range(len(body))]), name)


def test_already_decoded_body_with_encoding_header_is_still_read() -> None:
    # An addon that hands over mitmproxy's decoded content keeps the header.
    body = (FIXTURES / "openai_chat.json").read_bytes()
    assert_matches(run("openai_chat.json", [body], encoding="gzip"), "openai_chat.json")


def test_crlf_sse_stream() -> None:
    body = (FIXTURES / "anthropic_messages_stream.sse").read_bytes().replace(b"\n", b"\r\n")
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    assert_matches(run("anthropic_messages_stream.sse", chunks), "anthropic_messages_stream.sse")


def test_openai_sdk_hangup_after_done_is_complete() -> None:
    usage = run("openai_chat_stream.sse", complete=False)
    assert_matches(usage, "openai_chat_stream.sse")


def test_stream_cut_midway_is_incomplete_with_what_was_received() -> None:
    body = (FIXTURES / "anthropic_messages_stream.sse").read_bytes()
    cut = body[: body.index(b"event: message_delta")]
    usage = run("anthropic_messages_stream.sse", [cut], complete=False)
    assert usage.flags == {"incomplete"}
    assert usage.input_tokens == 4525  # from message_start
    assert usage.output_tokens is None  # message_start's 1 is a placeholder, not a count


def test_openai_stream_cut_before_usage() -> None:
    body = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    usage = run("openai_chat_stream.sse", [body[:300]], complete=False)
    assert usage.flags == {"incomplete"}
    assert usage.input_tokens is None and usage.output_tokens is None


def test_error_response_has_status_and_no_tokens() -> None:
    tap = open_call("api.openai.com", "POST", "/v1/chat/completions", "", {}, b'{"model":"gpt-4o"}')
    assert tap is not None
    tap.response_headers(429, {"content-type": "application/json"})
    tap.feed(b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}')
    usage = tap.finish(True)
    assert usage.status == 429 and usage.model == "gpt-4o"
    assert usage.input_tokens is None and usage.output_tokens is None
    assert usage.flags == frozenset()


def test_truncated_json_body_is_unparsed_not_raised() -> None:
    body = (FIXTURES / "openai_chat.json").read_bytes()
    usage = run("openai_chat.json", [body[:200]])
    assert "unparsed" in usage.flags and usage.input_tokens is None


def test_garbage_gzip_is_unparsed() -> None:
    usage = run("openai_chat.json", [b"\x1f\x8b\x08garbage" * 10], encoding="gzip")
    assert usage.flags == {"unparsed"}


def test_not_llm_calls_are_not_tapped() -> None:
    assert open_call("example.com", "POST", "/v1/chat/completions", "", {}, b"{}") is None
    assert open_call("api.openai.com", "GET", "/v1/models", "", {}, b"") is None
    assert open_call("api.openai.com", "POST", "/v1/files", "", {}, b"") is None
    assert open_call("api.anthropic.com", "POST", "/v1/messages/count_tokens", "", {}, b"{}") is None


class Config:
    capture_hosts = [("localhost:8443", "openai"), ("gw.internal", "anthropic", "anthropic")]


def test_configured_hosts_with_and_without_port() -> None:
    tap = open_call("localhost:8443", "POST", "/v1/chat/completions", "", {}, b'{"model":"m"}', Config())
    assert tap is not None and tap.info.provider == "localhost:8443" and tap.info.dialect == "openai"
    assert open_call("localhost:9999", "POST", "/v1/chat/completions", "", {}, b"{}", Config()) is None
    tap = open_call("gw.internal:443", "POST", "/v1/messages", "", {}, b"{}", Config())
    assert tap is not None and tap.info.provider == "anthropic"


def test_default_compatible_hosts() -> None:
    cases = {
        ("openrouter.ai", "/api/v1/chat/completions"): "openrouter",
        ("api.groq.com", "/openai/v1/chat/completions"): "groq",
        ("api.together.xyz", "/v1/chat/completions"): "together",
        ("api.mistral.ai", "/v1/chat/completions"): "mistral",
        ("api.deepseek.com", "/chat/completions"): "deepseek",
        ("api.x.ai", "/v1/chat/completions"): "x-ai",
        ("api.fireworks.ai", "/inference/v1/chat/completions"): "fireworks",
        ("api.perplexity.ai", "/chat/completions"): "perplexity",
        ("myres.openai.azure.com", "/openai/deployments/prod-4o/chat/completions"): "azure",
    }
    for (host, path), provider in cases.items():
        tap = open_call(host, "POST", path, "api-version=2024-10-21", {}, b"{}")
        assert tap is not None, host
        assert tap.info.provider == provider and tap.info.dialect == "openai"
    azure = open_call("myres.openai.azure.com", "POST", "/openai/deployments/prod-4o/chat/completions", "", {}, b"{}")
    assert azure is not None and azure.info.model == "prod-4o"


def test_gemini_openai_compatible_endpoint_and_key_free_endpoint() -> None:
    tap = open_call(
        "generativelanguage.googleapis.com", "POST", "/v1beta/openai/chat/completions", "", {},
        b'{"model":"gemini-2.5-flash"}',
    )
    assert tap is not None and tap.info.dialect == "openai" and tap.info.provider == "google"
    tap = open_call(
        "generativelanguage.googleapis.com", "POST", "/v1beta/models/gemini-2.5-flash:generateContent",
        "key=AIzaSECRET", {}, b"{}",
    )
    assert tap is not None
    tap.response_headers(200, {"content-type": "application/json"})
    usage = tap.finish(True)
    assert "AIzaSECRET" not in repr(usage)
    assert usage.endpoint == "/v1beta/models/gemini-2.5-flash:generateContent"


def test_groq_usage_under_x_groq() -> None:
    tap = open_call("api.groq.com", "POST", "/openai/v1/chat/completions", "", {},
                    b'{"model":"llama-3.3-70b-versatile","stream":true}')
    assert tap is not None
    tap.response_headers(200, {"content-type": "text/event-stream"})
    tap.feed(b'data: {"id":"x","model":"llama-3.3-70b-versatile","choices":[{"delta":{"content":"hi"}}]}\n\n')
    tap.feed(b'data: {"id":"x","model":"llama-3.3-70b-versatile","choices":[{"delta":{},"finish_reason":"stop"}],'
             b'"x_groq":{"id":"req_1","usage":{"prompt_tokens":24,"completion_tokens":377,"total_tokens":401}}}\n\n'
             b"data: [DONE]\n\n")
    usage = tap.finish(True)
    assert (usage.input_tokens, usage.output_tokens, usage.flags) == (24, 377, frozenset())


def test_huge_non_streamed_body_uses_bounded_head_and_tail() -> None:
    vector = ",".join(["-0.0123456789"] * 1536)
    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":[{vector}]}}' for i in range(400))
    body = f'{{"object":"list","model":"text-embedding-3-large","data":[{data}],' \
           f'"usage":{{"prompt_tokens":4000,"total_tokens":4000}}}}'.encode()
    assert len(body) > 8 * 1024 * 1024
    tap = open_call("api.openai.com", "POST", "/v1/embeddings", "", {}, b'{"model":"text-embedding-3-large"}')
    assert tap is not None
    tap.response_headers(200, {"content-type": "application/json", "content-encoding": "gzip"})
    packed = gzip.compress(body)
    for i in range(0, len(packed), 65536):
        tap.feed(packed[i : i + 65536])
    usage = tap.finish(True)
    assert (usage.model, usage.input_tokens, usage.flags) == ("text-embedding-3-large", 4000, frozenset())


def test_oversized_sse_event_keeps_usage() -> None:
    text = "x" * (6 * 1024 * 1024)
    completed = json.dumps({"type": "response.completed", "response": {
        "model": "gpt-4.1-2025-04-14", "output": [{"content": [{"text": text}]}],
        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 1500000, "output_tokens_details": {"reasoning_tokens": 0}}}})
    stream = f"event: response.completed\ndata: {completed}\n\n".encode()
    tap = open_call("api.openai.com", "POST", "/v1/responses", "", {}, b'{"model":"gpt-4.1","stream":true}')
    assert tap is not None
    tap.response_headers(200, {"content-type": "text/event-stream"})
    for i in range(0, len(stream), 16384):
        tap.feed(stream[i : i + 16384])
    usage = tap.finish(False)
    assert (usage.input_tokens, usage.output_tokens, usage.flags) == (10, 1500000, frozenset())


def test_anthropic_message_delta_with_cumulative_input_counts() -> None:
    # Newer API versions repeat the input-side totals in message_delta.
    tap = open_call("api.anthropic.com", "POST", "/v1/messages", "", {}, b'{"model":"claude-haiku-4-5","stream":true}')
    assert tap is not None
    tap.response_headers(200, {"content-type": "text/event-stream; charset=utf-8"})
    tap.feed(b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-haiku-4-5-20251001",'
             b'"usage":{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}\n\n')
    tap.feed(b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},'
             b'"usage":{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":89}}\n\n'
             b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    usage = tap.finish(True)
    assert (usage.input_tokens, usage.output_tokens, usage.cache_write_tokens) == (10, 89, 0)
