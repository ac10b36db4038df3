"""halton-meter-proto: its own distribution (./proto), with a generated blocking client."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import hm_proto

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
def test_the_built_wheel_installs_alone_into_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT / "proto")],
                   check=True)
    wheel = next((tmp_path / "dist").glob("halton_meter_proto-*.whl"))
    subprocess.run([*pip, "install", f"{wheel}[client]"], check=True)
    listed = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    for heavy in ("mitmproxy", "starlette", "sqlalchemy", "psycopg", "halton-meter="):
        assert heavy not in listed, listed
    probe = "import hm_proto, hm_proto_client, sys; print(hm_proto.__file__)"
    out = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", probe], capture_output=True,
                         text=True, check=True).stdout
    assert str(venv) in out
