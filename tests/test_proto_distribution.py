"""halton-meter-proto: its own distribution (./proto), with a generated blocking client."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import hm_proto
from tests.test_examples import clean_env, trio_program_survives_a_backend_restart

ROOT = Path(__file__).resolve().parent.parent


def test_the_blocking_client_is_generated_from_the_async_source() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_library_is_light_and_the_application_pins_it() -> None:
    proto = tomllib.loads((ROOT / "proto" / "pyproject.toml").read_text())["project"]
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert proto["version"] == app["version"] == hm_proto.__version__
    assert proto["requires-python"] == ">=3.11"
    names = [dep.split(">")[0].split("=")[0].split("<")[0] for dep in proto["dependencies"]]
    assert names == ["h11"]
    assert not any("==" in dep for deps in proto["optional-dependencies"].values() for dep in deps)
    assert f"halton-meter-proto[client,zstd]=={proto['version']}" in app["dependencies"]


@pytest.mark.slow
def test_the_built_wheel_installs_alone_and_runs_the_trio_example(tmp_path: Path) -> None:
    """pip install halton-meter-proto[client] (+ trio) into a fresh venv: no application
    dependency comes along, and example 2 pairs, syncs and survives a backend restart there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "-q", "--disable-pip-version-check"]
    env = clean_env()
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT / "proto")],
                   check=True, env=env)
    wheel = next((tmp_path / "dist").glob("halton_meter_proto-*.whl"))
    subprocess.run([*pip, "install", f"{wheel}[client]"], check=True, env=env)
    listed = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True,
                            check=True, env=env).stdout.lower()
    for heavy in ("mitmproxy", "starlette", "sqlalchemy", "psycopg", "halton-meter="):
        assert heavy not in listed, listed
    probe = "import hm_proto, hm_proto_client; print(hm_proto.__file__, hm_proto_client.__file__)"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True,
                         env=env).stdout
    assert out.count(str(venv)) == 2, out
    subprocess.run([*pip, "install", "trio"], check=True, env=env)  # the example's event loop
    work = tmp_path / "work"
    work.mkdir()
    trio_program_survives_a_backend_restart(python, work, env=env)
