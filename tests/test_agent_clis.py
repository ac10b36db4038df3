"""Coding-agent CLIs through a real daemon, as a user runs them after
`eval "$(halton-meter env)"`, installed with `npm ci` from tests/agents/package-lock.json:
Claude Code (`claude -p`) against the fake Anthropic upstream, and Codex CLI
(`codex exec`, the Responses API over WebSocket) against the fake WebSocket
upstream — one exact row per call or response, their keys never written."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.daemon import (
    HALTON_METER,
    Daemon,
    daemon_metering,
)
from .support.fake_providers import FakeProviders
from .support.fake_ws import PREWARM_USAGE, FakeWebSocketUpstream
from .support.npm import npm_ci
from .test_capture_parsers import EXPECTED

pytestmark = pytest.mark.slow

AGENTS = Path(__file__).parent / "agents"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, FakeProviders, Path]]:
    modules = npm_ci(AGENTS)
    with daemon_metering(tmp_path_factory.mktemp("agents"), FakeProviders) as (daemon, upstream):
        yield daemon, upstream, modules


def test_claude_code_is_metered_exactly(rig: tuple[Daemon, FakeProviders, Path], tmp_path: Path) -> None:
    daemon, upstream, modules = rig
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in daemon.env.items()
           if not k.lower().endswith(("_proxy", "ca_bundle", "cert_file", "ca_certs"))}
    env.update({"HOME": str(user), "ANTHROPIC_BASE_URL": upstream.base_url,
                "ANTHROPIC_API_KEY": "sk-ant-api03-ccSECRET0123456789",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
                "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_LEGACY_MODEL_REMAP": "1"})
    script = f'eval "$({" ".join(HALTON_METER)} env --shell bash)" && exec "$@"'
    res = subprocess.run(["bash", "-c", script, "bash", str(modules / ".bin" / "claude"), "-p", "say hi",
                          "--model", "claude-opus-4-1"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()  # Claude Code printed the fake's answer
    calls = [s for s in upstream.seen if s.path == "/v1/messages"]
    assert calls and len(calls) == len(upstream.seen)
    assert daemon.wait_rows(len(calls), timeout=15) == len(calls)
    with sqlite3.connect(f"file:{daemon.db_path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT model, stream, input_tokens, output_tokens, flags FROM requests").fetchall()
    spec = EXPECTED["anthropic_messages_stream.sse"]
    assert (spec["model"], 1, spec["input_tokens"], spec["output_tokens"], "") in rows
    assert not [p for p in daemon.home.rglob("*") if p.is_file() and b"ccSECRET" in p.read_bytes()]


def test_codex_cli_over_websocket_is_metered_exactly(rig: tuple[Daemon, FakeProviders, Path], tmp_path: Path) -> None:
    """Codex talks to the Responses API over WebSocket (wss://…/v1/responses): one row per
    response, its `generate: false` warm-up included."""
    daemon, _, modules = rig
    home = tmp_path / "home"
    user = tmp_path / "user"
    (user / ".codex").mkdir(parents=True)
    with daemon_metering(tmp_path, FakeWebSocketUpstream) as (d, ws):
        (user / ".codex" / "config.toml").write_text(
            f'model = "o4-mini"\nopenai_base_url = "https://localhost:{ws.port}/v1"\n')
        env = {k: v for k, v in d.env.items()
               if not k.lower().endswith(("_proxy", "ca_bundle", "cert_file", "ca_certs"))}
        env.update({"HOME": str(user), "CODEX_HOME": str(user / ".codex"),
                    "OPENAI_API_KEY": "sk-proj-cxSECRET0123456789"})
        script = f'eval "$({" ".join(HALTON_METER)} env --shell bash)" && exec "$@"'
        res = subprocess.run(["bash", "-c", script, "bash", str(modules / ".bin" / "codex"), "exec",
                              "--skip-git-repo-check", "say hi"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "Hi" in res.stdout
        creates = [m for m in ws.received if m.get("type") == "response.create"]
        assert creates, "Codex did not use the WebSocket transport"
        assert d.wait_rows(len(creates), timeout=15) == len(creates)
        with sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True) as conn:
            rows = sorted(conn.execute("SELECT endpoint, stream, input_tokens, output_tokens, flags FROM requests"))
        leaked = [p for p in home.rglob("*") if p.is_file() and b"cxSECRET" in p.read_bytes()]
    spec = EXPECTED["openai_responses_stream.sse"]
    want = [("/v1/responses", 1, PREWARM_USAGE["input_tokens"], 0, "")] * sum(m.get("generate") is False for m in creates)
    want += [("/v1/responses", 1, spec["input_tokens"], spec["output_tokens"], "")] * sum(
        m.get("generate") is not False for m in creates)
    assert rows == sorted(want)
    assert not leaked
