"""Installing and living with it: the README's first lines, --version, doctor's Python,
service files (checked by systemd-analyze where it exists), shell completion."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.daemon import daemon_env, run_cli

ROOT = Path(__file__).resolve().parent.parent


def cli(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, env=daemon_env(home, extra=extra or None))


def test_readme_starts_with_an_install_that_works_on_any_python() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block[0].startswith("uv tool install . && halton-meter start ")
    assert first_block[1].startswith("pip install -e ./proto -e '.[dev]' && python -m pytest ")
    assert "pip install -e ./proto -e '.[dev]' && python -m pytest" in (ROOT / ".ci" / "run").read_text()
    assert 'pipx install --python python3.11 --preinstall "$PWD/proto" .' in readme
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    source = project["tool"]["uv"]["sources"]["halton-meter-proto"]
    proto = tomllib.loads((ROOT / source["path"] / "pyproject.toml").read_text())["project"]
    assert proto["name"] == "halton-meter-proto"
    assert f"halton-meter-proto[client,zstd]=={proto['version']}" in project["project"]["dependencies"]
    for needed in ("## Uninstall", "halton-meter service uninstall", "rm -rf ~/.halton-meter",
                   "~/.local/share/halton-meter-cloud/cloud.sqlite", "halton-meter completion bash"):
        assert needed in readme, needed


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed here (the README's first line needs it)")
def test_uv_tool_install_from_the_readme(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__"))
    env = {**os.environ, "UV_TOOL_DIR": str(tmp_path / "tools"), "UV_TOOL_BIN_DIR": str(tmp_path / "bin"),
           "UV_NATIVE_TLS": "1"}  # the system trust store, as pip uses
    done = subprocess.run(["uv", "tool", "install", "."], cwd=src, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    version = subprocess.run([str(tmp_path / "bin" / "halton-meter"), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("halton-meter, version ")


def test_version_and_doctor_name_the_python(tmp_path: Path) -> None:
    import platform

    import hm_agent

    assert cli(tmp_path, "--version").stdout == f"halton-meter, version {hm_agent.__version__}\n"
    first = cli(tmp_path / "home", "doctor").stdout.splitlines()[0]
    assert first == f"✓ python         {platform.python_version()} ({sys.executable})"


def test_completion_scripts_and_a_completion(tmp_path: Path) -> None:
    for shell, marker in (("bash", "complete -o nosort -F _halton_meter_completion halton-meter"),
                          ("zsh", "#compdef halton-meter"), ("fish", "complete --no-files --command halton-meter")):
        res = cli(tmp_path, "completion", shell)
        assert res.returncode == 0 and marker in res.stdout, (shell, res.stdout)
    env = daemon_env(tmp_path, extra={"COMP_WORDS": "halton-meter rep", "COMP_CWORD": "1",
                                      "_HALTON_METER_COMPLETE": "bash_complete"})
    done = subprocess.run([sys.executable, "-m", "hm_cli.main"], env=env, capture_output=True, text=True)
    assert done.stdout == "plain,report\n"


def test_systemd_unit_install_and_uninstall(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "xdg config"
    res = cli(home, "service", "install", "--platform", "systemd", "--no-start", XDG_CONFIG_HOME=str(config))
    assert res.returncode == 0, res.stderr
    unit = config / "systemd" / "user" / "halton-meter.service"
    assert res.stdout == (f"● wrote {unit}\n"
                          "  Start it: systemctl --user daemon-reload && systemctl --user enable --now "
                          "halton-meter.service\n")
    text = unit.read_text()
    assert f'ExecStart="{sys.executable}" "-m" "hm_cli.main" "run"\n' in text
    assert f'Environment="HALTON_METER_HOME={home.resolve()}"\n' in text
    assert "Restart=on-failure\n" in text and "WantedBy=default.target\n" in text
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
    gone = cli(home, "service", "uninstall", "--platform", "systemd", XDG_CONFIG_HOME=str(config))
    assert gone.stdout == f"● removed {unit}; the daemon no longer starts at login\n"
    assert not unit.exists()
    again = cli(home, "service", "uninstall", "--platform", "systemd", XDG_CONFIG_HOME=str(config))
    assert again.stdout == f"● no service file at {unit}; nothing to remove\n"


def test_a_percent_in_the_home_is_escaped_for_systemd(tmp_path: Path) -> None:
    from hm_cli.service import systemd_unit

    assert 'Environment="HALTON_METER_HOME=/h/100%%"\n' in systemd_unit(Path("/h/100%"))


def test_launchd_agent_content(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = cli(home, "service", "install", "--platform", "launchd", "--print")
    agent = plistlib.loads(res.stdout.encode())
    assert agent["Label"] == "com.haltonmeter.daemon"
    assert agent["ProgramArguments"] == [sys.executable, "-m", "hm_cli.main", "run"]
    assert agent["EnvironmentVariables"] == {"HALTON_METER_HOME": str(home.resolve())}
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
