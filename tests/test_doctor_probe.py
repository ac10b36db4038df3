"""`doctor --probe`: Python, curl and Node (those on this machine) fetch the daemon's
reserved probe name with the shell's environment; inside `eval "$(halton-meter env)"`
all go through the meter, outside they are named as bypassing it. `doctor` also names
the Node version's needs and a loopback capture host that NO_PROXY sends direct."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from .support.daemon import HALTON_METER, Daemon, running_daemon

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    extra = '[[capture.hosts]]\nhost = "127.0.0.1:11434"\ndialect = "openai"\n'
    with running_daemon(tmp_path_factory.mktemp("probe") / "home", extra_config=extra) as d:
        yield d


def doctor(d: Daemon, with_env: bool, extra: str = "") -> subprocess.CompletedProcess[str]:
    hm = " ".join(HALTON_METER)
    setup = f'eval "$({hm} env --shell bash)" && ' if with_env else ""
    env = {k: v for k, v in d.env.items() if k.lower() not in ("ssl_cert_file", "no_proxy", "node_options")}
    return subprocess.run(["bash", "-c", f"{setup}{extra}{hm} doctor --probe"], env=env, capture_output=True,
                          text=True, timeout=180)


def lines(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        for name in ("probe python", "probe curl", "probe node", "node", "loopback hosts", "aiohttp"):
            if line[2:].startswith(name + " "):
                found[name] = line
    return found


def test_probe_inside_the_env_goes_through_the_meter(daemon: Daemon) -> None:
    res = doctor(daemon, with_env=True)
    got = lines(res.stdout)
    assert got["probe python"].startswith("✓") and "went through the meter" in got["probe python"]
    if shutil.which("curl"):
        assert got["probe curl"].startswith("✓")
    if shutil.which("node"):
        assert got["probe node"].startswith("✓"), res.stdout
        assert got["node"].startswith("✓")
    assert got["loopback hosts"].startswith("✓") and "127.0.0.1" in got["loopback hosts"]
    assert "trust_env=True" in got["aiohttp"]
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Probing" in res.stderr


def test_probe_outside_the_env_names_the_bypass(daemon: Daemon) -> None:
    res = doctor(daemon, with_env=False, extra="export NO_PROXY=localhost,127.0.0.1 && ")
    got = lines(res.stdout)
    assert got["probe python"].startswith("✗") and "bypassing the meter" in got["probe python"]
    if shutil.which("node"):
        assert got["probe node"].startswith("✗")
        assert got["node"].startswith("✗") and "NODE_OPTIONS" in got["node"]
    assert got["loopback hosts"].startswith("✗") and "NOT metered" in got["loopback hosts"]
    assert 'eval "$(halton-meter env)"' in res.stdout
    assert res.returncode == 1


def test_probe_leaves_no_row(daemon: Daemon) -> None:
    doctor(daemon, with_env=True)
    assert daemon.wait_rows(1, timeout=1.0) == 0
