from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hm_agent.secretfiles import InsecureSecretFile, read_secret, remove_secret, write_secret


def test_written_0600_and_read_back(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "cloud-credentials.json"
    old = os.umask(0)  # a permissive umask must not widen the file
    try:
        write_secret(p, b'{"token": "x"}')
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert read_secret(p) == b'{"token": "x"}'
    assert not [x for x in p.parent.iterdir() if x.name.startswith(".")]


def test_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    p = tmp_path / "k"
    write_secret(p, b"one")
    ino = p.stat().st_ino
    write_secret(p, b"two")
    assert read_secret(p) == b"two"
    assert p.stat().st_ino != ino  # a new file renamed over the old one


def test_group_readable_is_refused_with_fix(tmp_path: Path) -> None:
    p = tmp_path / "k"
    write_secret(p, b"s")
    p.chmod(0o640)
    with pytest.raises(InsecureSecretFile, match="chmod 600"):
        read_secret(p)


def test_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write_secret(real, b"s")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InsecureSecretFile, match="symlink"):
        read_secret(link)


def test_remove(tmp_path: Path) -> None:
    p = tmp_path / "k"
    write_secret(p, b"s")
    assert remove_secret(p) is True
    assert remove_secret(p) is False
