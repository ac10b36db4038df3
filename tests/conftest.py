"""Shared fixtures. Keep this file small: put helpers in tests/support/*."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.tls import CertAuthority, LocalTLSServer, make_ca

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

# Variables a developer's shell may export that would point the suite at a real
# home or send its traffic through a proxy (`eval "$(halton-meter env)"`).
# Cleared at import, before any fixture (module- and session-scoped ones too) runs.
PROXY_AND_TRUST_VARS = (
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
)


def _isolate_environment() -> Path:
    """Point every home-like variable at a throwaway directory; drop proxy, trust and HALTON_METER_* settings."""
    root = Path(tempfile.mkdtemp(prefix="hm-tests-"))
    for name in list(os.environ):
        if name.upper() in PROXY_AND_TRUST_VARS or name.startswith("HALTON_METER_"):
            del os.environ[name]
    os.environ.update(_homes_under(root))
    return root



def _let_children_take_ctrl_c() -> None:
    """Children start with SIGINT at its default, as they would from a terminal.

    A suite started in the background by a non-interactive shell (``bash .ci/run &``,
    ``nohup``, a CI runner's job) has SIGINT *ignored*, and every child inherits that:
    Python then installs no KeyboardInterrupt handler, so a test's ``send_signal(SIGINT)``
    standing in for the user's Ctrl-C does nothing and the CLI waits until it is killed.
    A handler here (rather than the ignore) is reset to the default at ``exec``, so the
    daemons and CLIs the tests start take Ctrl-C the way a user's terminal delivers it.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _homes_under(root: Path) -> dict[str, str]:
    """HOME, XDG dirs and HALTON_METER_HOME under root (HOME and XDG_RUNTIME_DIR exist, 0700)."""
    (root / "home").mkdir(mode=0o700)
    (root / "run").mkdir(mode=0o700)
    return {
        "HALTON_METER_HOME": str(root / "hm-home"),
        "HOME": str(root / "home"),
        "XDG_DATA_HOME": str(root / "home" / ".local" / "share"),
        "XDG_CONFIG_HOME": str(root / "home" / ".config"),
        "XDG_CACHE_HOME": str(root / "home" / ".cache"),
        "XDG_STATE_HOME": str(root / "home" / ".local" / "state"),
        "XDG_RUNTIME_DIR": str(root / "run"),
    }


_SESSION_ROOT = _isolate_environment()
_let_children_take_ctrl_c()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every @pytest.mark.anyio test runs once on asyncio and once on trio."""
    return str(request.param)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp HALTON_METER_HOME; tests never touch a real home."""
    home = tmp_path / "hm-home"
    monkeypatch.setenv("HALTON_METER_HOME", str(home))
    yield home


@pytest.fixture(autouse=True)
def _never_touch_real_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test gets its own throwaway homes, whatever the shell that ran pytest exported."""
    for name, value in _homes_under(tmp_path_factory.mktemp("env")).items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """A throwaway CA whose server certificate covers localhost and 127.0.0.1."""
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def upstream(ca: CertAuthority) -> Iterator[LocalTLSServer]:
    """A local HTTPS server that answers like an OpenAI-style LLM API."""
    with LocalTLSServer(ca) as srv:
        yield srv


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server, one per module (`create_database(name)` for each use)."""
    from tests.support.postgres import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, headless, one per module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
