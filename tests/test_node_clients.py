"""Node clients through a real daemon: the npm `openai`, `@anthropic-ai/sdk` and
`@google/genai` SDKs and plain `fetch`, streamed and not, on the machine's Node,
inside `eval "$(halton-meter env)"` (Node 20's fetch ignores HTTPS_PROXY: the
preload from `env` is what routes it), against the local fake upstreams.

The SDKs are installed with `npm ci` from tests/node/package-lock.json on first use.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.daemon import (
    HALTON_METER,
    Daemon,
    daemon_metering,
)
from .support.fake_providers import FakeProviders
from .support.npm import npm_ci
from .test_capture_parsers import EXPECTED

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).parent / "node"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
# case -> the fixture the fake upstream answers it with
CASES = {
    "openai-chat": "openai_chat.json",
    "openai-chat-stream": "openai_chat_stream.sse",
    "anthropic": "anthropic_messages.json",
    "anthropic-stream": "anthropic_messages_stream.sse",
    "gemini": "gemini_generate.json",
    "gemini-stream": "gemini_stream.sse",
    "fetch": "openai_responses.json",
    "fetch-stream": "openai_responses_stream.sse",
    "https-request": "openai_chat.json",
}


def node_modules() -> Path:
    return npm_ci(NODE_DIR)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, FakeProviders]]:
    node_modules()
    with daemon_metering(tmp_path_factory.mktemp("node"), FakeProviders) as (daemon, upstream):
        yield daemon, upstream


def run_node(daemon: Daemon, base: str, *cases: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """`node clients.mjs` in a bash that evaluated `halton-meter env` (as a user does)."""
    shell_env = dict(daemon.env)
    for name in ("NODE_OPTIONS", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "no_proxy", "NO_PROXY"):
        shell_env.pop(name, None)
    shell_env.update(env or {})
    script = f'eval "$({" ".join(HALTON_METER)} env --shell bash)" && exec node clients.mjs "$@"'
    res = subprocess.run(["bash", "-c", script, "bash", base, *cases], cwd=NODE_DIR, env=shell_env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def rows(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.rows()  # in the order they were written


def test_node_sdks_and_fetch_are_metered_exactly(rig: tuple[Daemon, FakeProviders]) -> None:
    daemon, upstream = rig
    before = len(rows(daemon))
    results = run_node(daemon, upstream.base_url)
    assert [r["case"] for r in results] == list(CASES)
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    assert results[0]["text"].startswith("The image shows")
    assert results[1]["usage"]["prompt_tokens"] == EXPECTED["openai_chat_stream.sse"]["input_tokens"]
    assert results[7]["events"] > 3
    assert daemon.wait_rows(before + len(CASES), timeout=15) == before + len(CASES)
    time.sleep(0.3)  # no stray extra row
    got = rows(daemon)[before:]
    assert len(got) == len(CASES)
    by_model = {(r["endpoint"], r["model"], bool(r["stream"])): r for r in got}
    for case, fixture in CASES.items():
        spec = EXPECTED[fixture]
        row = by_model.get((spec["path"], spec["model"], spec["stream"]))
        assert row is not None, (case, sorted(by_model))
        assert {t: row[t] for t in TOKENS} == {t: spec[t] for t in TOKENS}, case
        assert row["status"] == 200 and row["flags"] == " ".join(sorted(spec.get("flags", []))), case
    seen_hosts = {s.headers.get("host") for s in upstream.seen}
    assert seen_hosts == {f"localhost:{upstream.port}"}


def test_node_fetch_without_the_preload_bypasses_the_meter(rig: tuple[Daemon, FakeProviders]) -> None:
    """The control: Node 20's fetch ignores HTTPS_PROXY, so without NODE_OPTIONS nothing is metered."""
    daemon, upstream = rig
    major = int(subprocess.run(["node", "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                               text=True).stdout)
    if major >= 24:
        pytest.skip("Node 24+ honours NODE_USE_ENV_PROXY=1 by itself")
    before = len(rows(daemon))
    script = (f'eval "$({" ".join(HALTON_METER)} env --shell bash)" && unset NODE_OPTIONS && '
              f'export NODE_EXTRA_CA_CERTS={upstream.ca.ca_path} && exec node clients.mjs "$@"')
    res = subprocess.run(["bash", "-c", script, "bash", upstream.base_url, "fetch"], cwd=NODE_DIR,
                         env=dict(daemon.env), capture_output=True, text=True, timeout=120)
    assert json.loads(res.stdout)["ok"] is True  # it reached upstream directly...
    time.sleep(1.0)
    assert len(rows(daemon)) == before  # ...and the meter never saw it
