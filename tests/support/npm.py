"""npm packages the client tests run, installed with `npm ci` from a lockfile under tests/."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest


def npm_ci(folder: Path) -> Path:
    """folder/node_modules, installed if missing or older than folder/package-lock.json.

    Skips the test (with the reason) only when node itself is absent."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (apt-get install nodejs npm): these client tests need it")
    modules = folder / "node_modules"
    stamp = modules / ".halton-meter-lock-sha256"  # written after a successful npm ci of this lockfile
    digest = hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        npm = shutil.which("npm")
        assert npm, "node is installed but npm is not: apt-get install npm"
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"npm ci failed in {folder}: {res.stderr[-2000:]}"
        stamp.write_text(digest)
    return modules
