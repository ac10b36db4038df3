"""Attribution units: git read from files, program names, path rules, override order, bounds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hm_agent.attribution import (
    Caller,
    CallerResolver,
    GitReader,
    PathRule,
    Settings,
    attribute,
    branch_of,
    find_git,
    glob_regex,
    origin_url,
    program_name,
    repo_name_from_url,
    settings_from_config,
)
from hm_agent.config import ConfigError, parse_config
from hm_proto import MAX_TAGS, ApiError, parse_tags
from hm_proto.server import parse_row
from tests.support.cloudserver import sample_row


@pytest.mark.parametrize(("url", "name"), [
    ("git@github.com:acme/widgets.git", "widgets"),
    ("https://github.com/acme/widgets", "widgets"),
    ("https://gitlab.example.com/group/sub/gadgets.git/", "gadgets"),
    ("/srv/git/tools.git", "tools"),
    ("", None),
])
def test_repository_name_from_the_origin_url(url: str, name: str | None) -> None:
    assert repo_name_from_url(url) == name


def test_origin_url_is_read_from_git_config() -> None:
    config = '[core]\n\tbare = false\n[remote "upstream"]\n\turl = x\n[remote "origin"]\n\turl = git@h:a/b.git\n'
    assert origin_url(config) == "git@h:a/b.git"
    assert origin_url("[core]\n") is None


def test_worktree_and_detached_head_read_from_files(tmp_path: Path) -> None:
    main = tmp_path / "checkout"
    (main / ".git" / "worktrees" / "wt").mkdir(parents=True)
    (main / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (main / ".git" / "config").write_text("[core]\n")
    wt = tmp_path / "wt"
    (wt / "deep" / "er").mkdir(parents=True)
    (wt / ".git").write_text(f"gitdir: {main}/.git/worktrees/wt\n")
    (main / ".git" / "worktrees" / "wt" / "commondir").write_text("../..\n")
    (main / ".git" / "worktrees" / "wt" / "HEAD").write_text("a" * 40 + "\n")
    dirs = find_git(wt / "deep" / "er")
    assert dirs is not None and dirs.top == wt and dirs.commondir == (main / ".git").resolve()
    assert branch_of(dirs.gitdir) == "(detached aaaaaaa)"
    # no origin: the repository is named after the main checkout's folder, not the worktree's
    assert GitReader().read(str(wt / "deep")) == ("checkout", "(detached aaaaaaa)")
    assert GitReader().read(str(main)) == ("checkout", "main")
    assert GitReader().read(str(tmp_path)) == (None, None)


@pytest.mark.parametrize(("exe", "argv", "name"), [
    ("/usr/bin/curl", ["curl", "-s", "https://x"], "curl"),
    ("/usr/bin/python3.11", ["python3", "/home/me/agents/run.py", "--fast"], "python3.11 run.py"),
    ("/usr/bin/python3.11", ["python", "-u", "-X", "dev", "-m", "mypkg.cli"], "python3.11 -m mypkg.cli"),
    ("/usr/bin/python3.11", ["python", "-c", "print(1)"], "python3.11"),
    ("/opt/node/bin/node", ["node", "--require", "x.js", "server.js"], "node server.js"),
    (None, ["/opt/tool/bin/agent"], "agent"),
])
def test_program_names(exe: str | None, argv: list[str], name: str) -> None:
    assert program_name(exe, argv) == name


def test_glob_rules() -> None:
    rule = glob_regex("~/code/acme/**", "/home/me")
    assert rule.match("/home/me/code/acme") and rule.match("/home/me/code/acme/svc/x")
    assert not rule.match("/home/me/code/acmecorp")
    one = glob_regex("/src/*/api", "/home/me")
    assert one.match("/src/shop/api") and not one.match("/src/a/b/api")


def _settings(*rules: PathRule, sync: frozenset[str] | None = None) -> Settings:
    base = Settings(rules=rules)
    return base if sync is None else Settings(rules=rules, sync=sync)


def test_overrides_strongest_first() -> None:
    rule = PathRule("/w/**", glob_regex("/w/**", "/h"), "from-rule", {"team": "rule", "site": "eu"})
    caller = Caller(pid=1, program="curl", os_user="u", cwd="/w/x", repo="repo", branch="main",
                    env_project="from-env", env_tags={"team": "env"})
    s = _settings(rule)
    assert attribute(s, caller, None, None).project == "from-env"
    got = attribute(s, caller, "from-header", "team=header")
    assert (got.project, got.tags, got.repo, got.branch) == (
        "from-header", {"team": "header", "site": "eu"}, "repo", "main")
    no_env = Caller(pid=1, cwd="/w/x", repo="repo")
    assert attribute(s, no_env, None, None).project == "from-rule"
    assert attribute(s, Caller(pid=1, cwd="/elsewhere", repo="repo"), None, None).project == "repo"
    unresolved = attribute(s, Caller(unresolved="other_user"), None, None)
    assert (unresolved.project, unresolved.os_user, unresolved.flags) == (None, None, ("unattributed",))
    # headers still name the project of a caller that could not be resolved
    assert attribute(s, Caller(unresolved="gone"), "p", None).project == "p"
    assert attribute(Settings(enabled=False), caller, "p", "a=b").project is None


def test_bad_overrides_are_dropped_not_fatal() -> None:
    got = attribute(_settings(), Caller(pid=1, repo="r"), "evil\x1b[31m", "ok=1,bad key=2,ctl=\x07,=x")
    assert (got.project, got.tags, got.flags) == ("r", {"ok": "1"}, ("override_dropped",))
    many = ",".join(f"k{i}=v" for i in range(MAX_TAGS + 5))
    tags, problems = parse_tags(many)
    assert len(tags) == MAX_TAGS and len(problems) == 5
    assert parse_tags("k=" + "v" * 500)[0] == {}


def test_row_validation_bounds_the_new_fields() -> None:
    row = parse_row(sample_row(project="acme", repo="widgets", branch="feature/x", program="curl",
                               os_user="ana", tags={"team": "ml"}))
    assert (row.project, row.tags) == ("acme", {"team": "ml"})
    assert parse_row(sample_row()).project is None  # older daemons send none of them
    for bad in ({"project": "x" * 201}, {"branch": "a\nb"}, {"repo": 5}, {"tags": ["a"]},
                {"tags": {"bad key": "x"}}, {"tags": {f"k{i}": "v" for i in range(MAX_TAGS + 1)}},
                {"tags": {"k": 1}}, {"os_user": "\u202eevil"}):
        with pytest.raises(ApiError) as err:
            parse_row(sample_row(**bad))
        assert err.value.status == 400


def test_config_rules_are_checked_with_a_clear_line(tmp_path: Path) -> None:
    cfg = parse_config('[attribution]\nsync_branch = false\n[[attribution.rules]]\npath = "~/w/**"\n'
                       'project = "acme"\ntags = { team = "ml" }\n', tmp_path / "config.toml")
    settings = settings_from_config(cfg.attribution)
    assert settings.enabled and "branch" not in settings.sync and settings.rules[0].project == "acme"
    with pytest.raises(ConfigError, match="entry 1: tags.bad key"):
        parse_config('[[attribution.rules]]\npath = "/x"\ntags = { "bad key" = "v" }\n', tmp_path / "c")
    with pytest.raises(ConfigError, match="needs path"):
        parse_config('[[attribution.rules]]\nproject = "x"\n', tmp_path / "c")
    with pytest.raises(ConfigError, match="attribution.enabled must be true or false"):
        parse_config('[attribution]\nenabled = "yes"\n', tmp_path / "c")


@pytest.mark.parametrize("backend", ["proc", "psutil"])
def test_resolver_finds_a_real_client_and_its_environment(tmp_path: Path, backend: str) -> None:
    """Linux reads /proc (and sock_diag); macOS and others use psutil, exercised here on Linux too."""
    repo = tmp_path / "proj"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/dev\n")
    (repo / ".git" / "config").write_text('[remote "origin"]\n\turl = https://h/x/billing.git\n')
    resolver = CallerResolver(backend=backend)
    if backend == "proc" and not sys.platform.startswith("linux"):
        pytest.skip("the /proc backend is Linux's")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        local = srv.getsockname()
        child = subprocess.Popen(
            ["python3", "-c", f"import socket,sys; s=socket.create_connection(('127.0.0.1',{local[1]})); sys.stdin.read()"],
            cwd=repo, stdin=subprocess.PIPE, env={"HALTON_METER_PROJECT": "env-proj", "HALTON_METER_TAGS": "a=b",
                                                   "PATH": "/usr/bin:/bin"})
        try:
            conn, peer = srv.accept()
            caller = resolver.resolve(peer, local)
            again = resolver.resolve(peer, local)  # cached by PID and start time
            conn.close()
        finally:
            child.communicate(b"")
    assert caller.pid == child.pid and caller.unresolved is None and again == caller
    assert (caller.repo, caller.branch, caller.env_project, caller.env_tags) == ("billing", "dev", "env-proj", {"a": "b"})
    assert caller.program is not None and caller.program.startswith("python3")
    assert resolver.resolve(("127.0.0.1", 1), local).unresolved == "gone"


def test_sync_switches_leave_fields_out_of_the_uploaded_row_only() -> None:
    from hm_agent.attribution import PendingCaller
    from hm_agent.capture.tap import CapturedUsage
    from hm_agent.writer import CapturedCall, build_row

    usage = CapturedUsage(provider="openai", model="gpt-4o", host="api.openai.com",
                          endpoint="/v1/chat/completions", status=200, stream=False, input_tokens=10,
                          output_tokens=2)
    pending = PendingCaller(("127.0.0.1", 1), ("127.0.0.1", 2))
    pending.set(Caller(pid=1, program="curl", os_user="ana", cwd="/w", repo="widgets", branch="secret-branch"))
    settings = settings_from_config({"sync_branch": False, "sync_os_user": False})
    call = CapturedCall(id="00000000-0000-4000-8000-000000000001", ts="2026-11-24T10:00:00.000Z", usage=usage,
                        latency_ms=5, ttfb_ms=None, caller=pending, header_tags="team=ml", attribution=settings)
    stored = build_row(call, [])
    assert (stored.project, stored.branch, stored.os_user, stored.tags) == (
        "widgets", "secret-branch", "ana", '{"team":"ml"}')  # the local report has everything
    sent = json.loads(stored.row_json)
    assert (sent["project"], sent["branch"], sent["os_user"], sent["tags"]) == ("widgets", None, None, {"team": "ml"})
    assert "secret-branch" not in stored.row_json.decode()
    # a caller still resolving when the row is built: waited for, bounded
    slow = PendingCaller(("127.0.0.1", 1), ("127.0.0.1", 2))
    assert slow.wait(0.01).unresolved == "timeout"


def test_a_fifo_in_a_hostile_repository_never_blocks(tmp_path: Path) -> None:
    repo = tmp_path / "evil"
    (repo / ".git").mkdir(parents=True)
    os.mkfifo(repo / ".git" / "HEAD")
    os.mkfifo(repo / ".git" / "config")
    assert GitReader().read(str(repo)) == ("evil", None)


def test_a_storm_of_connections_is_bounded_not_queued_forever() -> None:
    from hm_agent.attribution import MAX_BACKLOG

    resolver = CallerResolver()
    resolver._thread = object()  # type: ignore[assignment]  # a resolver that never takes anything
    queued = [resolver.open(("127.0.0.1", 1000 + i), ("127.0.0.1", 1)) for i in range(MAX_BACKLOG)]
    assert all(p.caller is None for p in queued)
    late = resolver.open(("127.0.0.1", 9), ("127.0.0.1", 1))
    assert late.caller is not None and late.caller.unresolved == "busy"
    assert resolver.stats["unresolved"] == {"busy": 1}



def test_a_row_stored_before_its_caller_is_found_is_counted_as_timeout() -> None:
    """`status --json` tells a late resolver ("timeout") from a caller that was gone or busy."""
    resolver = CallerResolver()
    resolver._thread = object()  # type: ignore[assignment]  # a resolver that never answers
    pending = resolver.open(("127.0.0.1", 1000), ("127.0.0.1", 1))
    assert pending.wait(0.01).unresolved == "timeout"
    assert pending.wait(0.01).unresolved == "timeout"  # a second row of the same connection
    assert resolver.stats["unresolved"] == {"timeout": 1}
    pending.set(Caller(pid=1, program="curl"))
    assert pending.wait(0.01).program == "curl"


def test_the_newest_started_process_is_looked_at_first_though_pids_wrapped(tmp_path: Path) -> None:
    """PIDs wrap (32768 by default, within minutes on a busy box): a client that just connected
    can have a low PID; it is found first, not after every older process's descriptors."""
    proc = tmp_path / "proc"

    def process(pid: int, started: int, sockets: list[int]) -> None:
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} (x) S " + " ".join(["0"] * 18) + f" {started} 0 0\n")
        for fd, inode in enumerate(sockets):
            (proc / str(pid) / "fd" / str(fd)).symlink_to(f"socket:[{inode}]")

    process(30000, started=100, sockets=[7, 8, 9])  # older, higher PID (a browser, a database)
    process(300, started=900, sockets=[4242])  # the client, after the wrap
    resolver = CallerResolver(proc=str(proc), backend="proc")
    looked: list[int] = []
    holds = resolver._holds

    def spy(pid: int, target: str) -> bool:
        looked.append(pid)
        return holds(pid, target)

    resolver._holds = spy  # type: ignore[method-assign]
    assert resolver._pid_of(4242) == 300 and looked == [300]

def test_another_users_client_is_never_looked_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket's owner uid (from the kernel's table) differs: null fields at once, no process scan."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        f"   0: 0100007F:1F90 0100007F:D2E4 01 00000000:00000000 00:00000000 00000000 {os.getuid() + 4242}"
        "        0 67890 1 0000000000000000 20 4 30 10 -1\n"
    )
    resolver = CallerResolver(proc=str(proc), backend="proc")

    def no_scan(inode: int) -> None:
        raise AssertionError("looked into another user's processes")

    monkeypatch.setattr(resolver, "_pid_of", no_scan)
    caller = resolver.resolve(("127.0.0.1", 8080), ("127.0.0.1", 53988))
    assert caller == Caller(unresolved="other_user")
    assert resolver.resolve(("127.0.0.1", 8081), ("127.0.0.1", 53988)).unresolved == "gone"
