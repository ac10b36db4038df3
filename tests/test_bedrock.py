"""AWS Bedrock runtime: boto3 (inside `eval "$(halton-meter env)"`) through a real daemon
to a fake Bedrock endpoint — Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream for an Anthropic model — one exact row each; and the
event-stream framing read byte by byte, with a bad CRC flagged `unparsed`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest

from hm_agent.capture import open_call, route_for
from hm_agent.capture.eventstream import encode_message

from .support.daemon import HALTON_METER, Daemon, daemon_metering
from .support.fake_bedrock import CONVERSE_STREAM, EXPECTED, FakeBedrock, _event
from .test_capture_parsers import EXPECTED as FIXTURE_EXPECTED

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
CALLS = textwrap.dedent(f"""
    import json, boto3
    c = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=BASE,
                     aws_access_key_id="AKIAPYSECRET01234567", aws_secret_access_key="pySECRETsecretkey")
    msgs = [{{"role": "user", "content": [{{"text": "hi"}}]}}]
    print(c.converse(modelId="{MODEL}", messages=msgs)["usage"])
    print("".join(e["contentBlockDelta"]["delta"]["text"]
                  for e in c.converse_stream(modelId="{MODEL}", messages=msgs)["stream"] if "contentBlockDelta" in e))
    body = json.dumps({{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                       "messages": [{{"role": "user", "content": "hi"}}]}})
    print(json.loads(c.invoke_model(modelId="{MODEL}", body=body)["body"].read())["usage"])
    print(sum(1 for _ in c.invoke_model_with_response_stream(modelId="{MODEL}", body=body)["body"]))
""")


def test_bedrock_hosts_route() -> None:
    for host in ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock-runtime-fips.us-gov-west-1.amazonaws.com"):
        route = route_for(host)
        assert route is not None and (route.dialect, route.provider) == ("bedrock", "aws")
    assert route_for("bedrock.us-east-1.amazonaws.com") is None  # the control plane is not metered
    assert route_for("s3.amazonaws.com") is None


def _tap(kind: str) -> Any:
    tap = open_call("bedrock-runtime.us-east-1.amazonaws.com", "POST", f"/model/{MODEL.replace(':', '%3A')}/{kind}",
                    "", {}, b"{}")
    assert tap is not None
    tap.response_headers(200, {"content-type": "application/vnd.amazon.eventstream"})
    return tap


def test_event_stream_read_byte_by_byte_and_a_bad_crc_is_unparsed() -> None:
    body = b"".join(_event(k, p) for k, p in CONVERSE_STREAM)
    tap = _tap("converse-stream")
    for i in range(len(body)):
        tap.feed(body[i:i + 1])
    usage = tap.finish()
    assert (usage.input_tokens, usage.output_tokens, usage.model, usage.stream, usage.flags) == \
        (30, 12, MODEL, True, frozenset())
    broken = bytearray(encode_message({":event-type": "metadata"}, b'{"usage":{"inputTokens":1}}'))
    broken[-1] ^= 0xFF
    tap = _tap("converse-stream")
    tap.feed(bytes(broken))
    assert "unparsed" in tap.finish().flags
    tap = _tap("converse-stream")  # cut before the metadata event: incomplete
    tap.feed(b"".join(_event(k, p) for k, p in CONVERSE_STREAM[:3]))
    assert tap.finish(complete=False).flags == frozenset({"incomplete"})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, FakeBedrock]]:
    with daemon_metering(tmp_path_factory.mktemp("bedrock"), FakeBedrock, "bedrock") as (daemon, upstream):
        yield daemon, upstream


@pytest.mark.slow
def test_boto3_bedrock_calls_are_metered_exactly(rig: tuple[Daemon, FakeBedrock]) -> None:
    daemon, upstream = rig
    env = {k: v for k, v in daemon.env.items() if not k.lower().endswith(("_proxy", "ca_bundle", "cert_file"))}
    script = f'eval "$({" ".join(HALTON_METER)} env --shell bash)" && exec "$@"'
    code = f"BASE = {upstream.base_url!r}\n" + CALLS
    res = subprocess.run(["bash", "-c", script, "bash", sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Hello! How can I help?" in res.stdout
    assert daemon.wait_rows(4, timeout=15) == 4
    time.sleep(0.3)
    with sqlite3.connect(f"file:{daemon.db_path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = {r["endpoint"].rsplit("/", 1)[-1]: dict(r) for r in conn.execute("SELECT * FROM requests")}
    assert len(rows) == 4 and [p for p, _ in upstream.seen][0].startswith("/model/")
    stream_spec = FIXTURE_EXPECTED["anthropic_messages_stream.sse"]
    want = dict(EXPECTED, **{"invoke-with-response-stream": (
        stream_spec["input_tokens"], stream_spec["output_tokens"], stream_spec["cache_read_tokens"],
        stream_spec["cache_write_tokens"])})
    for kind, (inp, out, read, write) in want.items():
        row = rows[kind]
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == \
            (inp, out, read, write), kind
        assert row["model"] == MODEL and row["status"] == 200 and row["flags"] == "", kind
        assert row["stream"] == (kind in ("converse-stream", "invoke-with-response-stream"))
        assert row["cost_usd"] is not None, kind
    price = genai_prices.calc_price(genai_prices.Usage(input_tokens=30, output_tokens=12), MODEL,
                                    provider_id="aws").total_price
    assert Decimal(rows["converse-stream"]["cost_usd"]) == price
