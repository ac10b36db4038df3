"""Attribution: which project, repository, branch, program and user made a call.

The proxy sees each client's TCP connection. When a connection opens, the
addon hands its two addresses to :class:`CallerResolver`, whose own thread
finds the calling process (Linux: ``/proc/net/tcp*`` gives the socket's inode
and owner, the owner's ``/proc/<pid>/fd`` gives the PID) and reads, from that
process, the program, the OS user, the working directory, the git repository
around it (``.git`` read directly: worktrees and detached HEAD included) and
the two ``HALTON_METER_*`` variables of its environment. The proxy thread never
waits for any of it: the writer thread picks the answer up when it builds the
row. A caller that cannot be resolved (gone, another OS user, unsupported
platform) gives null fields and the row flag ``unattributed``.

Overrides, strongest first: the request headers ``X-Halton-Project`` and
``X-Halton-Tags`` (removed before the request goes upstream), the caller's
``HALTON_METER_PROJECT`` / ``HALTON_METER_TAGS``, ``[[attribution.rules]]``
path rules, then project = repository name. Rows carry names, never paths.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hm_proto import MAX_NAME_CHARS, MAX_TAGS, name_problem, parse_tags

log = logging.getLogger("hm_agent.attribution")

PROJECT_HEADER = "x-halton-project"
TAGS_HEADER = "x-halton-tags"
PROJECT_ENV = b"HALTON_METER_PROJECT"
TAGS_ENV = b"HALTON_METER_TAGS"
SYNC_FIELDS = ("project", "repo", "branch", "program", "os_user", "tags")

# Interpreters whose script (or -m module) names the program better than the binary.
_INTERPRETERS = re.compile(r"^(python|pypy|node|nodejs|bun|deno|ruby|perl|php|bash|sh|zsh|java)[0-9.]*$")
_MAX_ENVIRON = 1 << 20
_MAX_GIT_FILE = 256 << 10
_MAX_DEPTH = 64
_PID_CACHE = 512
MAX_BACKLOG = 256  # connections waiting for the resolver; past it new ones are "busy" (unattributed)
_REPO_CACHE = 256


@dataclass(frozen=True, slots=True)
class Caller:
    """What was found about the process at the other end of a connection."""

    pid: int | None = None
    program: str | None = None
    os_user: str | None = None
    cwd: str | None = None  # used for path rules; never stored
    repo: str | None = None
    branch: str | None = None
    env_project: str | None = None
    env_tags: dict[str, str] = field(default_factory=dict)
    unresolved: str | None = None  # why not: "gone", "other_user", "unsupported", "error"


UNSUPPORTED = Caller(unresolved="unsupported")


class PendingCaller:
    """The resolution of one connection, filled in by the resolver thread."""

    __slots__ = ("peer", "local", "caller", "_done", "_stats", "_late")

    def __init__(self, peer: tuple[str, int], local: tuple[str, int],
                 stats: dict[str, Any] | None = None) -> None:
        self.peer = peer
        self.local = local
        self.caller: Caller | None = None
        self._done = threading.Event()
        self._stats = stats  # the resolver's: a row stored before the answer counts as "timeout"
        self._late = False

    def set(self, caller: Caller) -> None:
        self.caller = caller
        self._done.set()

    def wait(self, timeout: float) -> Caller:
        """The caller, or an unresolved one if it took longer than ``timeout``.

        Counted once per connection in ``status --json`` as ``"timeout"``, so an
        ``unattributed`` row says whether the resolver was late or found nobody."""
        if self._done.wait(timeout) and self.caller is not None:
            return self.caller
        if self._stats is not None and not self._late:
            self._late = True
            why = self._stats["unresolved"]
            why["timeout"] = why.get("timeout", 0) + 1
        return Caller(unresolved="timeout")


@dataclass(frozen=True, slots=True)
class PathRule:
    pattern: str
    regex: re.Pattern[str]
    project: str | None
    tags: dict[str, str]


@dataclass(frozen=True, slots=True)
class Settings:
    """``[attribution]`` of config.toml."""

    enabled: bool = True
    rules: tuple[PathRule, ...] = ()
    sync: frozenset[str] = frozenset(SYNC_FIELDS)


@dataclass(frozen=True, slots=True)
class Attributed:
    project: str | None = None
    repo: str | None = None
    branch: str | None = None
    program: str | None = None
    os_user: str | None = None
    tags: dict[str, str] | None = None
    flags: tuple[str, ...] = ()


def glob_regex(pattern: str, home: str) -> re.Pattern[str]:
    """``~/code/acme/**`` as a regex on absolute paths: ``**`` any depth (also none), ``*`` one name."""
    if pattern == "~" or pattern.startswith("~/"):
        pattern = home.rstrip("/") + pattern[1:]
    if len(pattern) > 1:
        pattern = pattern.rstrip("/")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("/**", i):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "$")


def attribute(settings: Settings, caller: Caller | None, header_project: str | None,
              header_tags: str | None) -> Attributed:
    """Merge the caller and the overrides into the row's fields (strongest first: header, env, rule, repo)."""
    if not settings.enabled:
        return Attributed()
    flags: list[str] = []
    if caller is None or caller.unresolved is not None:
        caller = Caller()
        flags.append("unattributed")
    rule = None
    if caller.cwd is not None:
        rule = next((r for r in settings.rules if r.regex.match(caller.cwd)), None)
    tags: dict[str, str] = dict(rule.tags) if rule else {}
    tags.update(caller.env_tags)
    project = caller.env_project or (rule.project if rule else None) or caller.repo
    if header_tags is not None:
        parsed, problems = parse_tags(header_tags)
        tags.update(parsed)
        if problems:
            flags.append("override_dropped")
    if header_project is not None:
        value = header_project.strip()
        if name_problem(value) is None:
            project = value
        else:
            flags.append("override_dropped")
    if len(tags) > MAX_TAGS:
        tags = dict(list(tags.items())[:MAX_TAGS])
    return Attributed(
        project=project, repo=caller.repo, branch=caller.branch, program=caller.program,
        os_user=caller.os_user, tags=tags or None, flags=tuple(dict.fromkeys(flags)),
    )


# -- git -------------------------------------------------------------------------


def _read_small(path: Path | str, limit: int = _MAX_GIT_FILE) -> str | None:
    """At most ``limit`` bytes of a regular file (a FIFO or device in a hostile repo never blocks)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _clean_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()[:MAX_NAME_CHARS]
    return value if value and name_problem(value) is None else None


def repo_name_from_url(url: str) -> str | None:
    """``git@github.com:acme/widgets.git`` → ``widgets`` (the last path part, no ``.git``)."""
    url = url.strip().rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    name = re.split(r"[/:\\]", url)[-1] if url else ""
    return _clean_name(name)


def origin_url(config_text: str) -> str | None:
    """The url of ``[remote "origin"]`` in a git config file (enough of git's format for this)."""
    section = None
    for raw in config_text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = re.sub(r"\s+", " ", line.strip("[]").strip())
            continue
        if section is not None and section.lower() == 'remote "origin"':
            key, eq, value = line.partition("=")
            if eq and key.strip().lower() == "url":
                return value.strip().strip('"')
    return None


@dataclass(frozen=True, slots=True)
class GitDirs:
    top: Path  # the working tree
    gitdir: Path  # HEAD lives here (a worktree's own folder under .git/worktrees/)
    commondir: Path  # config lives here


def find_git(cwd: Path) -> GitDirs | None:
    """The repository containing ``cwd``, found by reading ``.git`` files and folders only."""
    here = cwd
    for _ in range(_MAX_DEPTH):
        dot = here / ".git"
        try:
            if dot.is_dir():
                return GitDirs(here, dot, dot)
            if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
                text = _read_small(dot, 4096) or ""
                if text.startswith("gitdir:"):
                    gitdir = Path(text[7:].strip())
                    if not gitdir.is_absolute():
                        gitdir = (here / gitdir).resolve()
                    common_text = _read_small(gitdir / "commondir", 4096)
                    common = gitdir
                    if common_text and common_text.strip():
                        common = Path(common_text.strip())
                        if not common.is_absolute():
                            common = (gitdir / common).resolve()
                    return GitDirs(here, gitdir, common)
        except OSError:
            return None
        if here.parent == here:
            return None
        here = here.parent
    return None


def branch_of(gitdir: Path) -> str | None:
    """``main`` for ``ref: refs/heads/main``; ``(detached abc1234)`` for a detached HEAD."""
    head = (_read_small(gitdir / "HEAD", 4096) or "").strip()
    if head.startswith("ref:"):
        ref = head[4:].strip()
        return _clean_name(ref.removeprefix("refs/heads/"))
    if re.fullmatch(r"[0-9a-f]{40,64}", head):
        return f"(detached {head[:7]})"  # a space: no branch can be called this
    return None


class GitReader:
    """Repository and branch for a folder; repository names cached by folder and config mtime."""

    def __init__(self) -> None:
        self._dirs: OrderedDict[str, GitDirs | None] = OrderedDict()
        self._names: dict[tuple[str, int], str | None] = {}

    def read(self, cwd: str) -> tuple[str | None, str | None]:
        if cwd in self._dirs:
            dirs = self._dirs[cwd]
            self._dirs.move_to_end(cwd)
        else:
            dirs = find_git(Path(cwd))
            self._dirs[cwd] = dirs
            if len(self._dirs) > _REPO_CACHE:
                self._dirs.popitem(last=False)
        if dirs is None:
            return None, None
        try:
            mtime = os.stat(dirs.commondir / "config").st_mtime_ns
        except OSError:
            mtime = 0
        key = (str(dirs.commondir), mtime)
        if key not in self._names:
            url = origin_url(_read_small(dirs.commondir / "config") or "")
            name = repo_name_from_url(url) if url else None
            if name is None:  # no origin: the folder's name (a worktree: the main checkout's)
                main_top = dirs.commondir.parent if dirs.commondir.name == ".git" else dirs.top
                name = _clean_name(main_top.name)
            if len(self._names) > _REPO_CACHE:
                self._names.clear()
            self._names[key] = name
        return self._names[key], branch_of(dirs.gitdir)


# -- the calling process (Linux /proc) ---------------------------------------------


def _hex_addr(ip: str, port: int) -> tuple[str, str] | None:
    """The ``/proc/net/tcp{,6}`` spelling of an address, and which of the two files has it."""
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    packed = addr.packed
    words = [packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    return "".join(words) + f":{port:04X}", "tcp" if len(packed) == 4 else "tcp6"


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1


def diag_owner(peer: tuple[str, int], local: tuple[str, int]) -> tuple[int, int] | None:
    """``(inode, uid)`` of the client's socket, asked of the kernel by its exact 4-tuple (sock_diag).

    One netlink round trip (tens of microseconds); /proc/net/tcp prints every
    socket of the machine and costs milliseconds on a busy one.
    """
    import ipaddress
    import socket
    import struct

    src, dst = ipaddress.ip_address(peer[0]), ipaddress.ip_address(local[0])
    if src.version != dst.version:
        return None
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    sockid = struct.pack(">HH16s16s", peer[1], local[1], src.packed.ljust(16, b"\0"), dst.packed.ljust(16, b"\0"))
    sockid += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(0.5)
        nl.sendto(msg, (0, 0))
        data = nl.recv(65536)
    if len(data) < 88:
        return None
    _length, kind = struct.unpack_from("=IH", data, 0)
    if kind == _NLMSG_ERROR:
        return None
    uid, inode = struct.unpack_from("=II", data, 80)
    return (inode, uid) if inode else None


def socket_owner(peer: tuple[str, int], local: tuple[str, int], proc: str = "/proc") -> tuple[int, int] | None:
    """``(inode, uid)`` of the client's end of the connection peer→local (sock_diag, else /proc/net)."""
    if proc == "/proc":
        try:
            return diag_owner(peer, local)
        except (OSError, ValueError):
            pass
    mine = _hex_addr(peer[0], peer[1])
    theirs = _hex_addr(local[0], local[1])
    if mine is None or theirs is None:
        return None
    try:
        with open(f"{proc}/net/{mine[1]}", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    needle = f" {mine[0]} {theirs[0]} ".encode()
    at = data.find(needle)
    if at < 0:
        return None
    line = data[at:data.find(b"\n", at)].split()
    # local rem st tx:rx tr:when retrnsmt uid timeout inode
    try:
        inode, uid = int(line[8]), int(line[6])
    except (IndexError, ValueError):
        return None
    return (inode, uid) if inode else None


def _process_start(pid: int, proc: str) -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def program_name(exe: str | None, argv: list[str]) -> str | None:
    """``curl``; ``python3.11 agent.py`` / ``python3.11 -m mypkg`` / ``node server.js`` for interpreters."""
    base = os.path.basename(exe) if exe else (os.path.basename(argv[0]) if argv else "")
    base = base.removesuffix(" (deleted)")
    if not base:
        return None
    if _INTERPRETERS.match(base):
        args = argv[1:]
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "-m" and i + 1 < len(args):
                return _clean_name(f"{base} -m {args[i + 1]}")
            if arg in ("-c", "-e", "--eval", "-p", "--print"):
                break
            if arg in ("-X", "-W", "-r", "--require", "--import", "--loader", "-I"):
                i += 2
                continue
            if arg.startswith("-"):
                i += 1
                continue
            return _clean_name(f"{base} {os.path.basename(arg.rstrip('/'))}")
    return _clean_name(base)


def _env_overrides(pid: int, proc: str) -> tuple[str | None, dict[str, str]]:
    try:
        with open(f"{proc}/{pid}/environ", "rb") as fh:
            data = fh.read(_MAX_ENVIRON)
    except OSError:
        return None, {}
    project = None
    tags: dict[str, str] = {}
    for item in data.split(b"\0"):
        if item.startswith(PROJECT_ENV + b"="):
            value = item[len(PROJECT_ENV) + 1:].decode("utf-8", "replace").strip()
            project = value if name_problem(value) is None else None
        elif item.startswith(TAGS_ENV + b"="):
            tags, _ = parse_tags(item[len(TAGS_ENV) + 1:].decode("utf-8", "replace"))
    return project, tags


@dataclass(frozen=True, slots=True)
class _Process:
    start: int | None
    program: str | None
    env_project: str | None
    env_tags: dict[str, str]


class CallerResolver:
    """Resolves connections to callers on its own thread; the proxy thread only enqueues."""

    def __init__(self, proc: str = "/proc", backend: str | None = None) -> None:
        self.proc = proc
        if backend is None:
            backend = "proc" if sys.platform.startswith("linux") and os.path.isdir(f"{proc}/net") else "psutil"
        if backend == "psutil":
            try:
                import psutil  # noqa: F401
            except ImportError:
                backend = "none"
        self.backend = backend
        self.supported = backend != "none"
        self.uid = os.getuid() if hasattr(os, "getuid") else -1
        self._queue: queue.SimpleQueue[PendingCaller | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._processes: OrderedDict[int, _Process] = OrderedDict()
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._users: dict[int, str] = {}
        self.git = GitReader()
        self.stats: dict[str, Any] = {"resolved": 0, "unresolved": {}, "last_ms": None, "slowest_ms": None}

    def start(self) -> None:
        if self.supported and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hm-attribution", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None

    def open(self, peer: tuple[str, int], local: tuple[str, int]) -> PendingCaller:
        """Called on the proxy thread at connection open: never blocks."""
        pending = PendingCaller(peer, local, self.stats)
        if self._thread is None:
            pending.set(UNSUPPORTED)
        elif self._queue.qsize() >= MAX_BACKLOG:  # a storm of new connections: stay bounded
            pending.set(Caller(unresolved="busy"))
            why = self.stats["unresolved"]
            why["busy"] = why.get("busy", 0) + 1
        else:
            self._queue.put(pending)
        return pending

    def _run(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            t0 = time.perf_counter()
            try:
                caller = self.resolve(pending.peer, pending.local)
            except Exception:
                log.exception("attribution failed for a connection; its rows are unattributed")
                caller = Caller(unresolved="error")
            pending.set(caller)
            ms = round((time.perf_counter() - t0) * 1000, 2)
            if caller.unresolved:
                why = self.stats["unresolved"]
                why[caller.unresolved] = why.get(caller.unresolved, 0) + 1
            else:
                self.stats["resolved"] += 1
            self.stats["last_ms"] = ms
            self.stats["slowest_ms"] = max(self.stats["slowest_ms"] or 0.0, ms)

    # -- one connection ------------------------------------------------------------

    def resolve(self, peer: tuple[str, int], local: tuple[str, int]) -> Caller:
        if self.backend == "psutil":
            return self._resolve_psutil(peer, local)
        owner = socket_owner(peer, local, self.proc)
        if owner is None:
            return Caller(unresolved="gone")
        inode, uid = owner
        if uid != self.uid:
            return Caller(unresolved="other_user")  # never look into another user's processes
        pid = self._pid_of(inode)
        if pid is None:
            return Caller(unresolved="gone")
        info = self._process(pid)
        if info is None:
            return Caller(unresolved="gone")
        try:
            cwd = os.readlink(f"{self.proc}/{pid}/cwd")
        except OSError:
            cwd = None
        repo, branch = self.git.read(cwd) if cwd else (None, None)
        return Caller(
            pid=pid, program=info.program, os_user=self._user(uid), cwd=cwd, repo=repo, branch=branch,
            env_project=info.env_project, env_tags=info.env_tags,
        )

    def _resolve_psutil(self, peer: tuple[str, int], local: tuple[str, int]) -> Caller:
        """macOS and others: the user's own processes' TCP connections (no root needed for them).

        A client of another user is not among them: it is reported "gone" (as a
        caller that exited), with the same null fields.
        """
        import psutil

        def owns(proc: Any) -> bool:
            try:
                conns = proc.net_connections(kind="tcp")
            except (psutil.Error, OSError):
                return False
            return any(c.laddr and c.raddr and (c.laddr[0], c.laddr[1]) == peer
                       and (c.raddr[0], c.raddr[1]) == local for c in conns)

        me = os.getpid()
        found = None
        for pid in reversed(self._recent):
            try:
                if owns(psutil.Process(pid)):
                    found = psutil.Process(pid)
                    break
            except psutil.Error:
                continue
        if found is None:
            candidates = []
            for proc in psutil.process_iter(["pid", "uids"]):
                uids = proc.info.get("uids")
                if proc.pid != me and (uids is None or uids.real == self.uid):
                    candidates.append(proc)
            found = next((p for p in sorted(candidates, key=lambda p: -p.pid) if owns(p)), None)
        if found is None:
            return Caller(unresolved="gone")
        pid = self._remember(found.pid)
        try:
            with found.oneshot():
                start = int(found.create_time() * 1000)
                known = self._processes.get(pid)
                if known is None or known.start != start:
                    try:
                        env = found.environ()
                    except (psutil.Error, OSError):
                        env = {}
                    project = env.get(PROJECT_ENV.decode(), "").strip() or None
                    tags, _ = parse_tags(env.get(TAGS_ENV.decode(), ""))
                    known = _Process(start, program_name(found.exe() or None, found.cmdline()),
                                     project if project and name_problem(project) is None else None, tags)
                    self._cache_process(pid, known)
                cwd = found.cwd()
                user = found.username()
        except (psutil.Error, OSError):
            return Caller(unresolved="gone")
        repo, branch = self.git.read(cwd) if cwd else (None, None)
        return Caller(pid=pid, program=known.program, os_user=_clean_name(user.rsplit("\\", 1)[-1]),
                      cwd=cwd, repo=repo, branch=branch, env_project=known.env_project,
                      env_tags=known.env_tags)

    def _cache_process(self, pid: int, info: _Process) -> None:
        self._processes[pid] = info
        self._processes.move_to_end(pid)
        if len(self._processes) > _PID_CACHE:
            self._processes.popitem(last=False)

    def _user(self, uid: int) -> str | None:
        if uid not in self._users:
            import pwd

            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = str(uid)
        return _clean_name(self._users[uid])

    def _process(self, pid: int) -> _Process | None:
        start = _process_start(pid, self.proc)
        if start is None:
            return None
        known = self._processes.get(pid)
        if known is not None and known.start == start:  # the same process (not a reused PID)
            self._processes.move_to_end(pid)
            return known
        try:
            exe: str | None = os.readlink(f"{self.proc}/{pid}/exe")
        except OSError:
            exe = None
        try:
            with open(f"{self.proc}/{pid}/cmdline", "rb") as fh:
                argv = [a.decode("utf-8", "replace") for a in fh.read(64 << 10).split(b"\0") if a]
        except OSError:
            argv = []
        env_project, env_tags = _env_overrides(pid, self.proc)
        info = _Process(start, program_name(exe, argv), env_project, env_tags)
        self._cache_process(pid, info)
        return info

    def _pid_of(self, inode: int) -> int | None:
        """The process holding socket ``inode``: recent callers first, then the newest started first."""
        target = f"socket:[{inode}]"
        me = os.getpid()
        tried: set[int] = set()
        for pid in reversed(self._recent):
            tried.add(pid)
            if self._holds(pid, target):
                return self._remember(pid)
        try:
            pids = [int(n) for n in os.listdir(self.proc) if n.isdigit()]
        except OSError:
            return None
        # Newest *started* first, not highest PID: PIDs wrap (32768 by default, within minutes on
        # a busy box), and a client that just connected was then scanned after every older process.
        started: list[tuple[int, int]] = []
        for pid in pids:
            if pid == me or pid in tried:
                continue
            try:
                if os.stat(f"{self.proc}/{pid}").st_uid != self.uid:
                    continue
            except OSError:
                continue
            start = _process_start(pid, self.proc)
            if start is not None:
                started.append((start, pid))
        for _start, pid in sorted(started, reverse=True):
            if self._holds(pid, target):
                return self._remember(pid)
        return None

    def _remember(self, pid: int) -> int:
        self._recent[pid] = None
        self._recent.move_to_end(pid)
        if len(self._recent) > 32:
            self._recent.popitem(last=False)
        return pid

    def _holds(self, pid: int, target: str) -> bool:
        fd_dir = f"{self.proc}/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return False
        for name in names:
            try:
                if os.readlink(f"{fd_dir}/{name}") == target:
                    return True
            except OSError:
                continue
        return False


def settings_from_config(table: dict[str, Any]) -> Settings:
    """Build :class:`Settings` from an already validated ``[attribution]`` table."""
    home = os.path.expanduser("~")
    rules = tuple(
        PathRule(r["path"], glob_regex(r["path"], home), r.get("project"), dict(r.get("tags", {})))
        for r in table.get("rules", [])
    )
    sync = frozenset(f for f in SYNC_FIELDS if table.get(f"sync_{f}", True))
    return Settings(enabled=bool(table.get("enabled", True)), rules=rules, sync=sync)
