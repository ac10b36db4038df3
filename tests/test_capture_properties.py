"""Property tests: network chunking never changes the usage, and no input
ever raises out of a tap."""

from __future__ import annotations

import gzip
import json

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hm_agent.capture import open_call

from .test_capture_parsers import EXPECTED, FIXTURES, HOST_FOR_PROVIDER, assert_matches, run

STREAMS = sorted(EXPECTED)  # SSE streams, the JSON-array stream and plain JSON bodies
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(body[start:point])
        start = point
    pieces.append(body[start:])
    return pieces


@SETTINGS
@given(
    name=st.sampled_from(STREAMS),
    encoding=st.sampled_from(["", "gzip", "zstd"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=40),
)
def test_any_split_of_a_recorded_stream_gives_the_same_usage(name: str, encoding: str, cuts: list[int]) -> None:
    body = (FIXTURES / name).read_bytes()
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "zstd":
        body = zstandard.ZstdCompressor().compress(body)
    assert_matches(run(name, split_at(body, cuts), encoding=encoding), name)


@SETTINGS
@given(
    name=st.sampled_from(sorted(EXPECTED)),
    encoding=st.sampled_from(["", "gzip", "br", "zstd", "deflate", "gzip, br", "bogus"]),
    content_type=st.sampled_from(["text/event-stream", "application/json", "text/plain", ""]),
    status=st.sampled_from([200, 201, 400, 500, 0]),
    chunks=st.lists(st.binary(max_size=300), max_size=12),
    complete=st.booleans(),
)
def test_random_bytes_never_raise(
    name: str, encoding: str, content_type: str, status: int, chunks: list[bytes], complete: bool
) -> None:
    spec = EXPECTED[name]
    tap = open_call(HOST_FOR_PROVIDER[spec["provider"]], "POST", spec["path"], "", {},
                    json.dumps(spec["request"]).encode())
    assert tap is not None
    tap.response_headers(status, {"content-type": content_type, "content-encoding": encoding})
    for chunk in chunks:
        tap.feed(chunk)
    usage = tap.finish(complete)
    assert usage.status == status
    assert tap.finish(complete) is usage  # idempotent


@SETTINGS
@given(
    prefix=st.sampled_from([b"", b"data: ", b"event: message_start\ndata: ", b"["]),
    noise=st.binary(max_size=400),
    request=st.binary(max_size=100),
    path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/models/x:streamGenerateContent",
                          "/v1/responses"]),
)
def test_random_events_and_requests_never_raise(prefix: bytes, noise: bytes, request: bytes, path: str) -> None:
    for host in HOST_FOR_PROVIDER.values():
        tap = open_call(host, "POST", path, "", {}, request)
        if tap is None:
            continue
        tap.response_headers(200, {"content-type": "text/event-stream"})
        tap.feed(prefix + noise + b"\n\n")
        tap.finish(False)
