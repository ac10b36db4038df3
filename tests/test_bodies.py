"""Opt-in body capture ([capture] bodies): redaction, caps, stream assembly, encryption at rest,
and the canary test: a prompt with a unique string and an API key in it, through the real daemon
and the official OpenAI SDK, in every local mode."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hm_agent import bodies
from hm_agent.config import ConfigError, parse_config
from hm_agent.store import Store
from tests.support.daemon import capture_host_config, running_daemon
from tests.support.fake_providers import FakeProviders
from tests.support.tls import make_ca

PROMPT_KEY = "sk-proj-CANARYKEY0123456789abcdef"  # an API key pasted into a prompt


def test_keys_and_tokens_are_masked_and_extra_patterns_apply() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    text = (f"a {PROMPT_KEY} b sk-ant-api03-abcdefgh12345678 c AIzaSyA1234567890abcdefghijklmnop d "
            f"hm_sync_0123456789abcdefABCDEF e {jwt} f ACME-123456 g sk-short")
    out = bodies.redact(text, (re.compile(r"ACME-[0-9]{6}"),))
    assert out == ("a [REDACTED] b [REDACTED] c [REDACTED] d [REDACTED] e [REDACTED] f [REDACTED] g sk-short")


def test_bodies_are_capped_after_redaction_with_a_flag() -> None:
    settings = bodies.BodySettings(mode="local", max_bytes=100)
    text = "x" * 95 + PROMPT_KEY + "y" * 50  # the key straddles the cap
    out, cut = bodies.prepare(text, settings)
    assert cut and len(out.encode()) <= 100 and "CANARYKEY" not in out and "sk-proj" not in out
    assert bodies.prepare("short", settings) == ("short", False)
    assert bodies.prepare("é" * 60, settings)[0] == "é" * 50  # never half a character


def test_streams_are_assembled_from_their_events() -> None:
    sse = (b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
           b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\ndata: [DONE]\n\n'
           b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"!"}}\n\n'
           b'data: {"type":"response.output_text.delta","delta":"?"}\n\n'
           b'data: {"candidates":[{"content":{"parts":[{"text":"."}]}}]}\n\n')
    assert bodies.assemble_stream(sse) == "Hello!?."
    import gzip

    assert bodies.decode_response([gzip.compress(sse)], "gzip", "text/event-stream") == "Hello!?."
    assert bodies.decode_response([b'{"a":', b' 1}'], None, "application/json") == '{"a": 1}'


def test_config_bodies_modes_cap_and_regexes_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert parse_config("", path).bodies is None
    got = parse_config('[capture]\nbodies = "local"\nbody_max_kib = 8\nredact = ["ACME-[0-9]+"]\n', path).bodies
    assert got.mode == "local" and got.max_bytes == 8192 and got.redact[0].pattern == "ACME-[0-9]+"
    for text, why in (('bodies = "on"', r"config.toml:2: capture.bodies must be one of off, local, sync"),
                      ("body_max_kib = 0", r"config.toml:2: capture.body_max_kib must be 1-4096"),
                      ('redact = ["(unclosed"]', r"config.toml:2: capture.redact: '\(unclosed' is not a regex")):
        with pytest.raises(ConfigError, match=why):
            parse_config(f"[capture]\n{text}\n", path)


PROGRAM = """
import openai
c = openai.OpenAI(api_key="sk-proj-HEADERKEY0123456789abcdef", base_url=BASE + "/v1", max_retries=0)
prompt = "Which prompt cost $40? " + CANARY + " my key is " + PROMPT_KEY
c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
list(c.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": prompt}]))
"""


def run_program(daemon: Any, base_url: str, canary: str) -> None:
    """PROGRAM through the daemon: one plain and one streamed chat call with the canary and a key."""
    code = f"BASE = {base_url!r}\nCANARY = {canary!r}\nPROMPT_KEY = {PROMPT_KEY!r}\n" + textwrap.dedent(PROGRAM)
    res = subprocess.run([sys.executable, "-c", code], env=daemon.env_for_clients(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


def everything_in(home: Path) -> bytes:
    """Every byte of every file in the home (db, WAL, logs, spills)."""
    out = []
    for root, _dirs, files in os.walk(home):
        for name in files:
            try:
                out.append(Path(root, name).read_bytes())
            except OSError:
                pass
    return b"\n".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["off", "local"])
def test_canary(tmp_path: Path, mode: str) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    ca = make_ca(tmp_path / "ca")
    with FakeProviders(ca) as upstream:
        extra = capture_host_config([f"localhost:{upstream.port}"]) + (
            f'[capture]\nbodies = "{mode}"\n' if mode != "off" else "")
        home = tmp_path / "home"
        with running_daemon(home, upstream_ca=ca.ca_path, extra_config=extra) as daemon:
            run_program(daemon, upstream.base_url, canary)
            assert daemon.wait_rows(2, timeout=15) == 2
            deadline = time.monotonic() + 10
            while mode != "off" and time.monotonic() < deadline:
                with Store(home / "db.sqlite", readonly=True) as ro:
                    if ro._query("SELECT count(*) FROM request_bodies")[0][0] == 2:
                        break
                time.sleep(0.1)
        found = everything_in(home)
        # The header key never appears, in any mode; the canary only encrypted (never in plain text).
        for secret in (canary, PROMPT_KEY, "HEADERKEY", "CANARYKEY"):
            assert secret.encode() not in found, f"{secret} found in the home"
        with Store(home / "db.sqlite", readonly=True) as ro:
            kept = ro._query("SELECT id, truncated, ciphertext FROM request_bodies")
            ids = [r["id"] for r in daemon.rows()]
        if mode == "off":
            assert kept == [] and not (home / "body.key").exists()
            return
        key_file = home / "body.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_bytes().strip()
        docs = {r[0]: bodies.decrypt(key, bytes(r[2])) for r in kept}
        assert set(docs) == set(ids)
        for doc in docs.values():
            request = json.loads(doc["request"])
            assert canary in request["messages"][0]["content"] and "[REDACTED]" in doc["request"]
            assert "CANARYKEY" not in json.dumps(doc) and "HEADERKEY" not in json.dumps(doc)
            assert doc["response"] and doc["truncated"] is False
        streamed = [d for d in docs.values() if json.loads(d["request"]).get("stream")]
        assert len(streamed) == 1 and "data:" not in streamed[0]["response"]  # assembled text, not SSE


def test_retention_deletes_a_rows_body_with_it(tmp_path: Path) -> None:
    from hm_agent.retention import Retention
    from tests.test_retention import NOW, Cfg, rows_on

    with Store(tmp_path / "db.sqlite") as store:
        old, new = rows_on("2026-09-01", 1, seed=1), rows_on("2026-11-29", 1, seed=2)
        store.insert_rows(old + new)
        store.insert_bodies([(old[0].id, False, b"gAAAA-old"), (new[0].id, True, b"gAAAA-new")])
        assert Retention(now=lambda: NOW).run_once(store, Cfg(30, cloud=False)) == 1
        assert store.body(old[0].id) is None and store.body(new[0].id) == (True, b"gAAAA-new")
