"""Secret files: written atomically with mode 0600, refused when exposed.

A token or key file is written to a temporary file in the same directory
(created 0600 from the start, so the secret is never readable by others even
for an instant), fsynced, renamed over the target, and the directory fsynced:
a crash leaves either the old file or the new one, never half of either.
Reading refuses a symlink or a file other users can read, with the command
that fixes it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .home import fsync_dir, write_atomic


class InsecureSecretFile(Exception):
    """A secret file is a symlink, not ours, or readable by group/others."""


def write_secret(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, data, 0o600)


def read_secret(path: Path) -> bytes:
    path = Path(path)
    st = os.lstat(path)  # raises FileNotFoundError for the caller to explain
    if stat.S_ISLNK(st.st_mode):
        raise InsecureSecretFile(
            f"{path} is a symlink; refusing to read a secret through it. "
            f"Replace it with a regular file (or run `halton-meter cloud connect` again)."
        )
    if not stat.S_ISREG(st.st_mode):
        raise InsecureSecretFile(f"{path} is not a regular file. Remove it and re-run `halton-meter cloud connect`.")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise InsecureSecretFile(f"{path} is owned by another user. Fix it with: chown $USER {path}")
    if st.st_mode & 0o077:
        raise InsecureSecretFile(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}). "
            f"Fix it with: chmod 600 {path}"
        )
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def remove_secret(path: Path) -> bool:
    """Delete a secret file if present; True if something was removed."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    fsync_dir(Path(path).parent)
    return True
