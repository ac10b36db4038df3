"""Capture: streaming-tap throughput, and time to first byte through the daemon.

Part 1 (parser). Large recorded-shape streams (OpenAI chat with usage,
Anthropic messages, Gemini alt=sse; identity and gzip) are fed to the
capture tap in 16 KiB network chunks. Baseline, same run, same bytes: buffer
the whole body, decode it, split it into events and json.loads every event
(what a naive addon does). Prints MB/s (of decoded body) and events/s, and the
ratio tap/baseline. Timed in CPU seconds of this process.

Part 2 (proxy). A local TLS fake upstream streams a chat completion; time to
the first SSE event at the client, direct vs through a real daemon
(`python -m hm_agent run` in a temp home), median and p90 over N calls
(keep-alive clients, calls interleaved), with bare mitmdump (streaming, no addon)
as a reference point for what mitmproxy itself costs.

Run: ``python benchmarks/bench_capture.py [--events N] [--calls N]``. The LAST
line is the tap's throughput and its ratio to the baseline, then the time to
the first event through the daemon against direct.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import select
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from hm_agent.capture import open_call  # noqa: E402

CHUNK = 16 * 1024


# -- part 1: parser throughput ------------------------------------------------------

def openai_stream(n: int) -> bytes:
    out = []
    for i in range(n):
        chunk = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
                 "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_44709d6fcb",
                 "choices": [{"index": 0, "delta": {"content": f" token{i} and some more text"},
                              "logprobs": None, "finish_reason": None}], "usage": None}
        out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    out.append(b'data: {"id":"chatcmpl-123","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18",'
               b'"choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,'
               b'"prompt_tokens_details":{"cached_tokens":1920}}}\n\ndata: [DONE]\n\n')
    return b"".join(out)


def anthropic_stream(n: int) -> bytes:
    out = [b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
           b'"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
           b'"output_tokens":1}}}\n\n']
    for i in range(n):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" word{i} more"}}
        out.append(b"event: content_block_delta\ndata: " + json.dumps(delta).encode() + b"\n\n")
    out.append(b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
               b'"usage":{"output_tokens":15}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
    return b"".join(out)


def gemini_stream(n: int) -> bytes:
    out = []
    for i in range(n):
        chunk = {"candidates": [{"content": {"parts": [{"text": f" piece {i} of the answer"}], "role": "model"},
                                 "index": 0}],
                 "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": i + 1,
                                   "totalTokenCount": 13 + i}, "modelVersion": "gemini-2.5-flash"}
        out.append(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    return b"".join(out)


STREAMS = {
    "openai": ("api.openai.com", "/v1/chat/completions",
               b'{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}', openai_stream),
    "anthropic": ("api.anthropic.com", "/v1/messages", b'{"model":"claude-sonnet-4-5","stream":true}',
                  anthropic_stream),
    "gemini": ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
               b"{}", gemini_stream),
}


def run_tap(host: str, path: str, request: bytes, wire: bytes, encoding: str) -> int | None:
    tap = open_call(host, "POST", path, "alt=sse", {}, request)
    assert tap is not None
    headers = {"content-type": "text/event-stream"}
    if encoding:
        headers["content-encoding"] = encoding
    tap.response_headers(200, headers)
    for i in range(0, len(wire), CHUNK):
        tap.feed(wire[i : i + CHUNK])
    return tap.finish(True).output_tokens


def run_baseline(wire: bytes, encoding: str, loads: Callable[[bytes], object] = json.loads) -> int:
    chunks = [wire[i : i + CHUNK] for i in range(0, len(wire), CHUNK)]
    body = b"".join(chunks)
    if encoding == "gzip":
        body = zlib.decompress(body, 31)
    parsed = 0
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                loads(line[5:])
                parsed += 1
    return parsed


def cpu_time(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def bench_parsers(n_events: int) -> tuple[float, float]:
    """(geometric mean of tap MB/s, geometric mean of tap/baseline)."""
    print(f"Part 1: capture tap vs buffer+json.loads-every-event ({n_events} events, {CHUNK // 1024} KiB chunks)")
    ratios, speeds = [], []
    for name, (host, path, request, make) in STREAMS.items():
        body = make(n_events)
        events = body.replace(b"\r\n", b"\n").count(b"\n\n")
        for encoding in ("", "gzip"):
            wire = gzip.compress(body, 6) if encoding == "gzip" else body
            assert run_tap(host, path, request, wire, encoding) is not None
            tap_s = cpu_time(lambda: run_tap(host, path, request, wire, encoding))  # noqa: B023
            base_s = cpu_time(lambda: run_baseline(wire, encoding))  # noqa: B023
            fast_s = cpu_time(lambda: run_baseline(wire, encoding, orjson.loads))  # noqa: B023
            mb = len(body) / 1e6
            label = f"{name}/{encoding or 'identity'}"
            print(f"  {label:20s} {mb:6.1f} MB  tap {mb / tap_s:8.1f} MB/s {events / tap_s:10.0f} ev/s"
                  f" | baseline {mb / base_s:6.1f} MB/s {events / base_s:8.0f} ev/s | x{base_s / tap_s:.1f}"
                  f" (orjson baseline {mb / fast_s:6.1f} MB/s: x{fast_s / tap_s:.1f})")
            ratios.append(base_s / tap_s)
            speeds.append(mb / tap_s)
    return statistics.geometric_mean(speeds), statistics.geometric_mean(ratios)


# -- part 2: TTFB direct vs through the daemon --------------------------------------

def start_daemon(home: Path, port: int, upstream_port: int, ca_pem: Path) -> tuple[subprocess.Popen[bytes], str]:
    home.mkdir(mode=0o700, parents=True)
    (home / "config.toml").write_text(
        f'[proxy]\nlisten_host = "127.0.0.1"\nlisten_port = {port}\n'
        f'ssl_verify_upstream_trusted_ca = "{ca_pem}"\n'
        f'[[capture.hosts]]\nhost = "localhost:{upstream_port}"\ndialect = "openai"\n[cloud]\nenabled = false\n'
    )
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HALTON_METER_HOME=str(home), HOME=str(home.parent))
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen([sys.executable, "-m", "hm_agent", "run", "--ready-fd", str(write_fd)],
                               env=env, pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 60)
    message = os.read(read_fd, 4096).decode().strip() if ready else ""
    os.close(read_fd)
    if not message.startswith("ok "):
        process.kill()
        process.wait()
        raise RuntimeError(f"daemon did not start: {message!r}")
    return process, message[3:]


def start_bare_mitmdump(confdir: Path, port: int, ca_pem: Path) -> subprocess.Popen[bytes]:
    """Reference point: mitmproxy alone, streaming every body, no addon of ours."""
    mitmdump = Path(sys.executable).with_name("mitmdump")
    process = subprocess.Popen(
        [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port), "--set", f"confdir={confdir}",
         "--set", f"ssl_verify_upstream_trusted_ca={ca_pem}", "--set", "stream_large_bodies=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if (confdir / "mitmproxy-ca-cert.pem").exists():
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("mitmdump did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# The streamed calls timed: OpenAI chat (its body is held for inject_stream_usage,
# which may rewrite it) and Anthropic messages (streamed upstream as it arrives).
TTFB_CALLS = {
    "openai": ("/v1/chat/completions",
               {"model": "gpt-4o-mini", "messages": [], "stream": True, "stream_options": {"include_usage": True}}),
    "anthropic": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [], "stream": True}),
}


def ttfb_ms(client: object, url: str, body: dict[str, object] = TTFB_CALLS["openai"][1]) -> float:
    import httpx

    assert isinstance(client, httpx.Client)
    start = time.perf_counter()
    with client.stream("POST", url, json=body, headers={"authorization": "Bearer sk-bench"}) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                first = time.perf_counter()
                break
        for _ in lines:
            pass
    return (first - start) * 1000


def bench_ttfb(calls: int) -> tuple[float, float, float]:
    """OpenAI chat direct and through the daemon, and what the daemon adds to Anthropic's:
    median ms to the first SSE event."""
    import httpx
    from tests.support.fake_providers import FakeProviders
    from tests.support.tls import make_ca

    print(f"Part 2: time to first SSE event, {calls} streamed chat calls per client (keep-alive)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = make_ca(base / "ca")
        with FakeProviders(ca) as upstream:
            process, bound = start_daemon(base / "home", free_port(), upstream.port, ca.ca_path)
            bare_port = free_port()
            bare = start_bare_mitmdump(base / "bare", bare_port, ca.ca_path)
            try:
                mitm_ca = base / "home" / "mitmproxy" / "mitmproxy-ca-cert.pem"
                clients = {
                    "direct": httpx.Client(verify=ssl.create_default_context(cafile=str(ca.ca_path))),
                    "bare mitmdump": httpx.Client(proxy=f"http://127.0.0.1:{bare_port}", verify=ssl.create_default_context(
                        cafile=str(base / "bare" / "mitmproxy-ca-cert.pem"))),
                    "through daemon": httpx.Client(proxy=f"http://{bound}",
                                                   verify=ssl.create_default_context(cafile=str(mitm_ca))),
                }
                for client in clients.values():  # warm up: imports, TLS, the CA's leaf cert
                    for path, body in TTFB_CALLS.values():
                        ttfb_ms(client, upstream.base_url + path, body)
                samples: dict[tuple[str, str], list[float]] = {(k, c): [] for k in TTFB_CALLS for c in clients}
                for _ in range(calls):  # interleaved, so load on the machine hits all alike
                    for kind, (path, body) in TTFB_CALLS.items():
                        for label, client in clients.items():
                            samples[kind, label].append(ttfb_ms(client, upstream.base_url + path, body))
                for (kind, label), values in samples.items():
                    values.sort()
                    p90 = values[max(0, int(len(values) * 0.9) - 1)]
                    print(f"  {kind:9s} {label:15s} median {statistics.median(values):6.2f} ms   p90 {p90:6.2f} ms")
                medians = {key: statistics.median(v) for key, v in samples.items()}
                for kind in TTFB_CALLS:
                    added = medians[kind, "through daemon"] - medians[kind, "direct"]
                    print(f"  {kind}: added by the daemon (median): {added:.2f} ms")
                return medians["openai", "direct"], medians["openai", "through daemon"], (
                    medians["anthropic", "through daemon"] - medians["anthropic", "direct"])
            finally:
                stop(process)
                stop(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=40_000, help="events per recorded stream (part 1)")
    parser.add_argument("--calls", type=int, default=int(os.environ.get("BENCH_TTFB_CALLS", "30")),
                        help="streamed calls per client (part 2)")
    args = parser.parse_args()
    speed, ratio = bench_parsers(max(1, args.events))
    headline = f"capture tap vs buffer+json.loads: {speed:.1f} MB/s, x{ratio:.2f} (geometric means)"
    try:
        direct, daemon, anthropic = bench_ttfb(max(1, args.calls))
        headline += (f"; first SSE event through the daemon {daemon:.2f} ms vs direct {direct:.2f} ms "
                     f"({daemon - direct:+.2f} ms; Anthropic {anthropic:+.2f} ms)")
    except Exception as exc:  # the parser figures still stand
        print(f"Part 2 skipped: {exc}")
    print(headline)


if __name__ == "__main__":
    main()
