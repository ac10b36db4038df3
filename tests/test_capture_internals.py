"""The building blocks of the taps: SSE splitting, bounded buffers, decoders."""

from __future__ import annotations

import gzip
import json

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from hm_agent.capture import open_call
from hm_agent.capture.bounded import (
    FULL_LIMIT,
    HEAD_LIMIT,
    TAIL_LIMIT,
    BoundedBuffer,
    first_string_for_key,
    last_object_for_key,
)
from hm_agent.capture.decoding import DecodeError, decoder_for
from hm_agent.capture.sse import SseEvent, SseSplitter

STREAM = (
    b"event: a\ndata: 1\n\n"
    b": a comment\ndata: two\ndata: lines\n\n"
    b"id: 7\nretry: 10\nevent: b\ndata:no-space\n\n"
    b"event: empty\n\n"
    b"data: last-without-blank-line"
)
WANT = [SseEvent("a", b"1"), SseEvent(None, b"two\nlines"), SseEvent("b", b"no-space"),
        SseEvent(None, b"last-without-blank-line")]


def split_all(pieces: list[bytes]) -> list[SseEvent]:
    splitter = SseSplitter()
    events = [e for p in pieces for e in splitter.feed(p)]
    return events + splitter.close()


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_fields_and_line_endings(newline: bytes) -> None:
    body = STREAM.replace(b"\n", newline)
    assert split_all([body]) == WANT
    assert split_all([body[i : i + 1] for i in range(len(body))]) == WANT


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20), st.booleans())
def test_sse_any_split(cuts: list[int], crlf: bool) -> None:
    body = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    points = sorted(set(c % (len(body) + 1) for c in cuts)) + [len(body)]
    pieces, start = [], 0
    for point in points:
        pieces.append(body[start:point])
        start = point
    assert split_all(pieces) == WANT


def test_sse_markers_skip_other_events() -> None:
    splitter = SseSplitter()
    body = b"data: {\"x\":1}\n\ndata: {\"usage\":{\"a\":1}}\n\ndata: {\"y\":2}\n\n"
    assert splitter.feed(body, (b'"usage"',)) == [SseEvent(None, b'{"usage":{"a":1}}')]
    splitter = SseSplitter()
    body = b"data: u1\n\ndata: u2\n\ndata: other\n\n"
    assert splitter.feed(body, (b"u",), last_only=True) == [SseEvent(None, b"u2")]


def test_sse_oversized_event_keeps_head_and_tail() -> None:
    splitter = SseSplitter()
    big = b"event: huge\ndata: {\"model\":\"m\",\"x\":\"" + b"x" * (FULL_LIMIT + 10) + b"\",\"usage\":{\"n\":3}}"
    events = []
    for i in range(0, len(big), 65536):
        events += splitter.feed(big[i : i + 65536])
    events += splitter.feed(b"\n\ndata: next\n\n")
    assert [e.name for e in events] == ["huge", None]
    buf = events[0].oversized
    assert buf is not None and buf.truncated
    assert last_object_for_key(buf.tail(), "usage") == {"n": 3}
    assert first_string_for_key(buf.head(), "model") == "m"
    assert events[1].data == b"next"


def test_bounded_buffer_limits() -> None:
    buf = BoundedBuffer()
    piece = b"0123456789" * 6553
    while buf.total <= 3 * FULL_LIMIT:
        buf.append(piece)
    assert buf.truncated and buf.whole() is None
    assert len(buf.head()) == HEAD_LIMIT and len(buf.tail()) == TAIL_LIMIT
    assert buf.tail().endswith(piece[-100:])


def test_usage_inside_strings_is_not_taken() -> None:
    doc = json.dumps({"text": 'say "usage": {"prompt_tokens": 999}', "usage": {"prompt_tokens": 5}}).encode()
    assert last_object_for_key(doc, "usage") == {"prompt_tokens": 5}
    tricky = json.dumps({"usage": {"prompt_tokens": 5}, "text": 'a "usage": {"prompt_tokens": 999} b'}).encode()
    assert last_object_for_key(tricky, "usage") == {"prompt_tokens": 5}


@pytest.mark.parametrize("encoding,pack", [
    ("gzip", gzip.compress),
    ("br", brotli.compress),
    ("zstd", zstandard.ZstdCompressor().compress),
])
def test_decoders_byte_by_byte(encoding: str, pack: object) -> None:
    body = b"data: hello\n\n" * 1000
    packed = pack(body)  # type: ignore[operator]
    decoder = decoder_for(encoding)
    assert b"".join(decoder.decode(packed[i : i + 1]) for i in range(len(packed))) == body


def test_stacked_and_unknown_encodings() -> None:
    body = b'{"a": 1}'
    packed = brotli.compress(gzip.compress(body))
    assert decoder_for("gzip, br").decode(packed) == body
    with pytest.raises(DecodeError):
        decoder_for("compress")
    with pytest.raises(DecodeError):
        decoder_for("gzip").decode(b"not gzip at all")


def test_anthropic_stream_ending_in_an_error_event_is_incomplete() -> None:
    tap = open_call("api.anthropic.com", "POST", "/v1/messages", "", {}, b'{"model":"claude-sonnet-4-5","stream":true}')
    assert tap is not None
    tap.response_headers(200, {"content-type": "text/event-stream"})
    tap.feed(b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
             b'"usage":{"input_tokens":40,"output_tokens":1}}}\n\n'
             b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n')
    usage = tap.finish(True)
    assert usage.flags == {"incomplete"} and usage.input_tokens == 40 and usage.output_tokens is None


def test_gemini_json_array_stream_cut_short_keeps_the_last_usage() -> None:
    tap = open_call("generativelanguage.googleapis.com", "POST",
                    "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "", {}, b"{}")
    assert tap is not None
    tap.response_headers(200, {"content-type": "application/json"})
    tap.feed(b'[{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],'
             b'"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":1,"totalTokenCount":10}}\n,\n'
             b'{"candidates":[{"content":{"parts":[{"text":" the')
    usage = tap.finish(False)
    assert (usage.input_tokens, usage.output_tokens, usage.flags) == (9, 1, frozenset({"incomplete"}))
    assert usage.model == "gemini-2.5-flash" and usage.stream


@pytest.mark.parametrize("kind", ["sse", "json"])
def test_memory_stays_bounded_for_a_huge_response(kind: str) -> None:
    import tracemalloc

    if kind == "sse":
        tap = open_call("api.openai.com", "POST", "/v1/chat/completions", "", {},
                        b'{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}')
        event = b'data: {"model":"gpt-4o","choices":[{"delta":{"content":"' + b"w" * 400 + b'"}}],"usage":null}\n\n'
        end = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\ndata: [DONE]\n\n'
        content_type = "text/event-stream"
    else:
        tap = open_call("api.openai.com", "POST", "/v1/embeddings", "", {}, b'{"model":"text-embedding-3-large"}')
        event = b'{"object":"embedding","embedding":[' + b"0.0123456," * 60 + b'0.1]},'
        end = b'{"index":0}],"model":"text-embedding-3-large","usage":{"prompt_tokens":3,"total_tokens":3}}'
        content_type = "application/json"
    assert tap is not None
    tap.response_headers(200, {"content-type": content_type})
    chunk = event * (65536 // len(event))
    tracemalloc.start()
    try:
        if kind == "json":
            tap.feed(b'{"object":"list","data":[')
        for _ in range(40 * 1024 * 1024 // len(chunk)):  # 40 MB through the tap
            tap.feed(chunk)
        tap.feed(end)
        usage = tap.finish(True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert usage.input_tokens == 3 and usage.flags == frozenset()
    assert peak < 12 * 1024 * 1024, peak


def test_streamed_request_body_is_kept_up_to_its_bound() -> None:
    from hm_agent.addon import MAX_REQUEST_BODY, _RequestBody

    body = _RequestBody()
    assert body(b"ab") == b"ab" and body(b"") == b"" and body(b"cd") == b"cd"
    assert body.body() == b"abcd"
    big = _RequestBody()
    for _ in range(3):
        assert big(b"x" * (MAX_REQUEST_BODY // 2)) == b"x" * (MAX_REQUEST_BODY // 2)  # passed on whole
    assert big.body() == b"" and big.chunks == []


def test_ratelimit_headers_are_normalised_and_bounded() -> None:
    from hm_agent.capture.ratelimits import ratelimits

    got = ratelimits({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-tokens": "29000",
                      "anthropic-ratelimit-output-tokens-reset": "2026-11-29T14:00:01Z",
                      "x-ratelimit-limit-evil": "1\x1b[31m", "retry-after": "3", "content-type": "x"})
    assert got == {"requests": {"limit": "500"}, "tokens": {"remaining": "29000"},
                   "output-tokens": {"reset": "2026-11-29T14:00:01Z"}, "retry-after": {"reset": "3"}}
    many = {f"x-ratelimit-limit-kind{i}": "1" for i in range(50)}
    assert len(ratelimits(many) or {}) == 8
    assert ratelimits({"content-type": "application/json"}) is None
    assert ratelimits({"x-ratelimit-limit-requests": "9" * 200}) is None


def test_audio_tokens_of_chat_and_realtime_are_priced_as_audio() -> None:
    from decimal import Decimal

    import genai_prices

    from hm_agent.capture import CapturedUsage
    from hm_agent.capture.pricing import price
    from hm_agent.capture.usage import openai_tokens

    chat = openai_tokens({"prompt_tokens": 120, "completion_tokens": 300,
                          "prompt_tokens_details": {"audio_tokens": 100, "cached_tokens": 0},
                          "completion_tokens_details": {"audio_tokens": 250, "reasoning_tokens": 0}})
    assert (chat.input_audio_tokens, chat.output_audio_tokens) == (100, 250)
    realtime = openai_tokens({"input_tokens": 132, "output_tokens": 121,
                              "input_token_details": {"audio_tokens": 13, "cached_tokens": 64,
                                                      "cached_tokens_details": {"audio_tokens": 5}},
                              "output_token_details": {"audio_tokens": 91}})
    assert (realtime.input_tokens, realtime.cache_read_tokens, realtime.input_audio_tokens,
            realtime.cache_audio_read_tokens, realtime.output_audio_tokens) == (132, 64, 13, 5, 91)
    model = "gpt-realtime"  # audio priced apart from text
    usage = CapturedUsage("openai", model, "api.openai.com", "/v1/chat/completions", 200, False,
                          input_tokens=120, output_tokens=300, input_audio_tokens=100, output_audio_tokens=250)
    cost, _ = price(usage)
    want = genai_prices.calc_price(genai_prices.Usage(input_tokens=120, output_tokens=300, input_audio_tokens=100,
                                                      output_audio_tokens=250), model, provider_id="openai")
    text_only = genai_prices.calc_price(genai_prices.Usage(input_tokens=120, output_tokens=300), model,
                                        provider_id="openai")
    assert cost is not None and Decimal(cost) == want.total_price != text_only.total_price


def test_websocket_responses_follow_the_http_usage_rules() -> None:
    import json as _json

    from hm_agent.capture.websocket import open_websocket

    session = open_websocket("api.openai.com", "/v1/responses", "", {})
    assert session is not None
    session.client_message(b'{"type":"response.create","model":"gpt-4o"}', 1.0)
    session.server_message(b'{"type":"response.created","response":{"id":"r1"}}', 1.1)
    done = _json.dumps({"type": "response.completed", "response": {
        "id": "r1", "model": "gpt-4o", "usage": {"input_tokens": 10 ** 15, "output_tokens": 1}}}).encode()
    ((usage, response),) = session.server_message(done, 2.0)
    assert usage.flags == frozenset({"implausible_usage"}) and usage.input_tokens is None
    assert (response.started, response.first_event) == (1.0, 1.1)
    # a delta that merely mentions a terminal event's name is not one
    session.client_message(b'{"type":"response.create"}', 3.0)
    assert session.server_message(b'{"type":"response.output_text.delta","delta":"response.completed"}', 3.1) == []
    ((cut, _),) = session.close()
    assert cut.flags == frozenset({"incomplete"})
