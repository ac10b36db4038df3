"""The daemon's home directory and the files in it.

Everything the daemon keeps lives under one directory (``~/.halton-meter``,
or ``$HALTON_METER_HOME``), created 0700 so other users can neither read the
database nor connect to the control socket. This module is imported by
``halton-meter status``: keep it free of heavy imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "HALTON_METER_HOME"

# AF_UNIX paths are limited to 108 bytes on Linux (104 on macOS); deep temp
# homes exceed that, so such homes get a socket in a private temp directory.
_MAX_SOCKET_PATH = 100


class HomeError(Exception):
    """The home directory or one of its files is unusable; the message says how to fix it."""


def home_dir() -> Path:
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".halton-meter"


@dataclass(frozen=True, slots=True)
class HomePaths:
    """Where each of the daemon's files lives."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / "config.toml"

    @property
    def machine(self) -> Path:
        return self.home / "machine.json"

    @property
    def db(self) -> Path:
        return self.home / "db.sqlite"

    @property
    def mitm_confdir(self) -> Path:
        return self.home / "mitmproxy"

    @property
    def ca_cert(self) -> Path:
        """The certificate users trust (never the key)."""
        return self.mitm_confdir / "mitmproxy-ca-cert.pem"

    @property
    def ca_key(self) -> Path:
        """mitmproxy keeps the CA key and certificate together in this file."""
        return self.mitm_confdir / "mitmproxy-ca.pem"

    @property
    def ca_bundle(self) -> Path:
        """certifi's CAs plus ours, for SSL_CERT_FILE / REQUESTS_CA_BUNDLE."""
        return self.home / "ca-bundle.pem"

    @property
    def log(self) -> Path:
        return self.home / "daemon.log"

    @property
    def pid(self) -> Path:
        return self.home / "daemon.pid"

    @property
    def state(self) -> Path:
        """Written by a running daemon: pid, ports, start time (for fast status)."""
        return self.home / "daemon.json"

    @property
    def cloud_credentials(self) -> Path:
        return self.home / "cloud-credentials.json"

    @property
    def cloud_key(self) -> Path:
        return self.home / "cloud.key"

    @property
    def spill(self) -> Path:
        """Rows the database did not take before the daemon exited (replayed at start)."""
        return self.home / "unwritten-rows.jsonl"

    @property
    def control_socket(self) -> Path:
        candidate = self.home / "control.sock"
        if len(os.fsencode(candidate)) <= _MAX_SOCKET_PATH:
            return candidate
        return runtime_dir() / f"{self._digest}.sock"

    @property
    def spill_fallback(self) -> Path:
        """Where unwritten rows go when the home itself cannot take them (a full disk)."""
        return runtime_dir() / f"{self._digest}-unwritten-rows.jsonl"

    @property
    def _digest(self) -> str:
        return hashlib.sha256(os.fsencode(self.home)).hexdigest()[:20]


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def private_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a directory only we can use (None when it is). Symlinks are refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory (a symlink or a file)"
    if st.st_uid != _uid():
        return f"is owned by uid {st.st_uid}, not by you (uid {_uid()})"
    if st.st_mode & 0o077:
        return f"is accessible to other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def runtime_dir() -> Path:
    """The private directory for the control socket of a home whose path is too long.

    ``$XDG_RUNTIME_DIR/halton-meter`` when ``$XDG_RUNTIME_DIR`` is an absolute,
    short path to a directory that is ours alone (as the XDG spec requires),
    else ``$TMPDIR/halton-meter-<uid>``. Either way the daemon creates it 0700
    and refuses it if it is not ours or others can enter it
    (:func:`ensure_private_dir`); the client checks the same before connecting.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR") or ""
    if xdg and os.path.isabs(xdg) and len(os.fsencode(xdg)) <= _MAX_SOCKET_PATH - 40:
        if private_dir_problem(Path(xdg)) is None:
            return Path(xdg) / "halton-meter"
    return Path(tempfile.gettempdir()) / f"halton-meter-{_uid()}"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` 0700, or accept it only if it is ours and closed to others; else HomeError.

    A directory another user made first (``mkdir(exist_ok=True)`` accepted it)
    would let them plant a socket and impersonate the daemon.
    """
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise HomeError(f"cannot create {path}: {exc.strerror}. Set {HOME_ENV} to a shorter path.") from None
    problem = private_dir_problem(path)
    if problem is not None:
        raise HomeError(
            f"{path} {problem}: another user could impersonate the daemon there, so it is not used. "
            f"If it is not yours, have it removed (rm -r {path}); or set {HOME_ENV} to a shorter path "
            f"so the socket lives in the home."
        )
    return path


def ensure_socket_dir(hp: HomePaths) -> None:
    """The control socket's directory when it is not the home (a long home path); HomeError if unsafe."""
    parent = hp.control_socket.parent
    if parent != hp.home:
        ensure_private_dir(parent)


def paths(home: Path | None = None) -> HomePaths:
    return HomePaths(home if home is not None else home_dir())


def ensure_home(home: Path | None = None) -> HomePaths:
    """Create the home (0700) if needed; raise HomeError if it cannot be used."""
    hp = paths(home)
    try:
        hp.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(
            f"cannot create {hp.home}: {exc.strerror}. "
            f"Fix the permissions or set {HOME_ENV} to a writable directory."
        ) from None
    if not hp.home.is_dir():
        raise HomeError(f"{hp.home} is not a directory. Move it away or set {HOME_ENV}.")
    if not os.access(hp.home, os.W_OK | os.X_OK):
        raise HomeError(
            f"{hp.home} is not writable. Fix it with: chmod u+rwx {hp.home} "
            f"(or set {HOME_ENV} to a writable directory)."
        )
    try:
        os.chmod(hp.home, 0o700)
    except OSError:
        pass  # e.g. a mount that ignores modes: checked below
    st = os.stat(hp.home)
    if st.st_uid != _uid():
        # Its owner could read the database and plant a control socket or a config.
        raise HomeError(
            f"{hp.home} belongs to uid {st.st_uid}, not to you (uid {_uid()}): its owner could read "
            f"your rows and impersonate the daemon. Use a home of your own: set {HOME_ENV}."
        )
    if st.st_mode & 0o022:
        raise HomeError(
            f"{hp.home} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}) and could "
            f"not be made private: chmod 700 {hp.home}, or set {HOME_ENV} to a private directory."
        )
    return hp


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a temp file in the same directory and rename: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file behind
        raise
    else:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a power cut


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


MAX_HOME_FILE = 1024 * 1024  # config.toml, machine.json, prices/current: a few KiB when sane


def read_regular(path: Path, limit: int = MAX_HOME_FILE) -> bytes:
    """A small file of the home, read whole: it may be a symlink (dotfile managers make
    them), but what it opens must be a regular file of at most ``limit`` bytes. A FIFO
    (whose open and read would block for good) or ``/dev/zero`` (endless) raises OSError
    saying so; FileNotFoundError passes through for the caller."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("it is not a regular file (a FIFO, device or directory)")
        if st.st_size > limit:
            raise OSError(f"it is {st.st_size:,} bytes, more than the {limit:,} it may have")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(f"it is more than the {limit:,} bytes it may have")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_machine_id(hp: HomePaths) -> str | None:
    """The machine id, or None if machine.json does not exist yet."""
    try:
        raw = read_regular(hp.machine)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HomeError(f"cannot read {hp.machine}: {exc.strerror or exc}. Fix it or its permissions.") from None
    try:
        data = json.loads(raw)
        machine_id = str(uuid.UUID(str(data["machine_id"])))
    except (ValueError, KeyError, TypeError):
        raise HomeError(
            f"{hp.machine} is corrupt (expected {{\"machine_id\": \"<uuid>\"}}); it was left "
            f"untouched. Restore it from a backup, or delete it to get a new machine id "
            f"(the machine then appears as a new device)."
        ) from None
    return machine_id


def ensure_machine_id(hp: HomePaths) -> str:
    """Read machine.json, creating it with a random UUID on first init only."""
    existing = read_machine_id(hp)
    if existing is not None:
        return existing
    machine_id = str(uuid.uuid4())
    body = json.dumps({"machine_id": machine_id}, indent=2).encode() + b"\n"
    # O_EXCL via link-free approach: write a temp file then rename only if absent.
    tmp = hp.machine.with_name(f".machine.json.tmp-{os.getpid()}")
    write_atomic(tmp, body, 0o644)
    try:
        os.link(tmp, hp.machine)  # fails if another process created it meanwhile
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        found = read_machine_id(hp)
        assert found is not None
        return found
    tmp.unlink(missing_ok=True)
    return machine_id
