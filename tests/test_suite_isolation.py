"""The suite never touches a real home, whatever the shell that runs pytest exported.

tests/conftest.py points HALTON_METER_HOME, HOME and the XDG dirs at throwaway
directories (at import, and again per test) and drops proxy and trust
variables. The slow test runs a few tests in a child pytest whose environment
points every one of those variables at a sentinel "real" home holding files,
and checks that not one byte, mode or mtime in it changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hm_agent.home import ensure_home, ensure_machine_id
from hm_cloud.db import default_db_url, make_engine
from tests.conftest import PROXY_AND_TRUST_VARS

ROOT = Path(__file__).resolve().parent.parent
HOME_VARS = ("HALTON_METER_HOME", "HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
             "XDG_STATE_HOME", "XDG_RUNTIME_DIR")


def test_homes_are_throwaway_and_no_proxy_is_set(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp().resolve()
    for name in HOME_VARS:
        assert Path(os.environ[name]).resolve().is_relative_to(base), name
    assert not [k for k in os.environ if k.upper() in PROXY_AND_TRUST_VARS]
    assert not [k for k in os.environ if k.startswith("HALTON_METER_") and k != "HALTON_METER_HOME"]


def test_writing_the_default_home_lands_in_a_throwaway_dir() -> None:
    """A test that forgets hm_home, in process and through the CLI, writes only under the temp homes."""
    assert ensure_machine_id(ensure_home())
    make_engine(default_db_url()).connect().close()  # the backend's default SQLite file, under XDG_DATA_HOME
    out = subprocess.run([sys.executable, "-m", "hm_cli.main", "report", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under root with its mode, mtime (ns) and, for files, content."""
    seen: dict[str, tuple[int, int, bytes]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        seen[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, path.read_bytes() if path.is_file() else b"")
    return seen


@pytest.mark.slow
def test_a_preset_real_home_stays_untouched(tmp_path: Path) -> None:
    real = tmp_path / "real-user"
    hm = real / ".halton-meter"
    hm.mkdir(parents=True, mode=0o700)
    (hm / "config.toml").write_text('[proxy]\nlisten_port = 8090\n')
    (hm / "machine.json").write_text('{"machine_id": "sentinel"}\n')
    (hm / "db.sqlite").write_bytes(b"not touched")
    (real / "run").mkdir(mode=0o700)
    env = {**os.environ,
           "HALTON_METER_HOME": str(hm), "HOME": str(real), "XDG_DATA_HOME": str(real / ".local" / "share"),
           "XDG_CONFIG_HOME": str(real / ".config"), "XDG_CACHE_HOME": str(real / ".cache"),
           "XDG_STATE_HOME": str(real / ".local" / "state"), "XDG_RUNTIME_DIR": str(real / "run"),
           # what `eval "$(halton-meter env)"` exports: a dead proxy and a trust file that is not there
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "SSL_CERT_FILE": str(hm / "ca-bundle.pem"),
           "HALTON_METER_TICK_SECONDS": "999"}
    before = snapshot(real)
    me = "tests/test_suite_isolation.py"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}",
         f"{me}::test_homes_are_throwaway_and_no_proxy_is_set",
         f"{me}::test_writing_the_default_home_lands_in_a_throwaway_dir",
         "tests/test_config.py::test_machine_id_is_made_once_and_kept",
         "tests/test_cli_offline.py::test_status_with_daemon_down"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "4 passed" in out.stdout
    assert snapshot(real) == before
