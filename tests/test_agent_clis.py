"""Coding-agent CLIs through a real daemon, as a user runs them after
`eval "$(halton-meter env)"`: Claude Code (`claude -p`, the npm package's native
binary, installed with `npm ci` from tests/agents/package-lock.json) against the
fake Anthropic upstream — one exact row per call, its key never written."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.daemon import HALTON_METER, Daemon, capture_host_config, running_daemon
from .support.fake_providers import FakeProviders
from .support.npm import npm_ci
from .support.tls import make_ca
from .test_capture_parsers import EXPECTED

pytestmark = pytest.mark.slow

AGENTS = Path(__file__).parent / "agents"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, FakeProviders, Path]]:
    modules = npm_ci(AGENTS)
    tmp = tmp_path_factory.mktemp("agents")
    ca = make_ca(tmp / "ca")
    with FakeProviders(ca) as upstream, running_daemon(
        tmp / "home", upstream_ca=ca.ca_path, extra_config=capture_host_config([f"localhost:{upstream.port}"]),
    ) as daemon:
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
