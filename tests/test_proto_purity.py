"""hm_proto must stay pure: importing it pulls in no I/O, clock or entropy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {
    "anyio", "trio", "asyncio", "socket", "ssl", "selectors", "sqlite3", "_sqlite3",
    "time", "datetime", "random", "secrets", "mitmproxy", "httpcore", "httpx",
    "threading", "subprocess", "pathlib", "uuid",
}

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])  # -I ignores PYTHONPATH: probe the hm_proto under test
names = sys.argv[2:]
before = set(sys.modules)
for name in names:  # the package and every submodule, _wire included
    __import__(name)
after = set(sys.modules)
print(json.dumps(sorted(after - before)))
"""


def _src_dir() -> str:
    import hm_proto

    return str(Path(hm_proto.__file__).parent.parent)


def _submodules() -> list[str]:
    import hm_proto

    pkg_dir = Path(hm_proto.__file__).parent
    return ["hm_proto"] + [f"hm_proto.{p.stem}" for p in sorted(pkg_dir.glob("*.py")) if p.stem != "__init__"]


def test_importing_hm_proto_imports_no_io_clock_or_entropy() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, _src_dir(), *_submodules()], capture_output=True, text=True, check=True
    ).stdout
    new = set(json.loads(out))
    roots = {name.split(".")[0] for name in new}
    assert not (roots & FORBIDDEN), f"hm_proto imported {sorted(roots & FORBIDDEN)}"
