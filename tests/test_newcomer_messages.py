"""The rough edges a first-time user hit: config errors, port clashes, stale locks, doctor text."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import config_text, daemon_env, free_port, run_cli, running_daemon


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, env=daemon_env(home))


BROKEN = """\
[proxy]
listen_prot = 9
listen_port = "x"

[[capture.hosts]]
host = "a.example:1"
dialect = "opneai"

[cloud]
base_url = "ftp://x"
"""


def test_every_config_error_at_once_with_its_line(tmp_path: Path) -> None:
    from hm_agent.config import DIALECTS

    home = tmp_path / "home"
    home.mkdir()
    cfg = home / "config.toml"
    cfg.write_text(BROKEN)
    res = cli(home, "start")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [
        f"halton-meter: error: {cfg} has 3 problems:",
        f"  {cfg}:3: proxy.listen_port must be an integer, not 'x'",
        f"  {cfg}:7: capture.hosts entry 1: dialect must be one of {', '.join(DIALECTS)}, not 'opneai'; "
        f"did you mean openai?",
        f"  {cfg}:10: cloud.base_url must be an http(s) URL, not 'ftp://x'",
        "Fix these and run it again.",
    ]


def test_unknown_keys_suggest_the_known_one(tmp_path: Path) -> None:
    from hm_agent.config import parse_config

    path = tmp_path / "config.toml"
    cfg = parse_config(
        '[proxy]\nlisten_prot = 9\n\n[[capture.hosts]]\nhost = "b"\n\n[[capture.hosts]]\nhost = "c"\ndilect = "openai"\n'
        '\n[[pricing.override]]\nmodel = "m"\ninput_per_mtok = "1"\n',
        path,
    )
    assert cfg.warnings == [
        f"{path}:2: unknown key proxy.listen_prot (ignored); did you mean listen_port?",
        f"{path}:9: capture.hosts entry 2: unknown key dilect (ignored); did you mean dialect?",
        f"{path}:13: pricing.override entry 1: input_per_mtok is deprecated (still read); rename it input_mtok",
    ]


def test_template_uses_the_documented_price_names() -> None:
    from hm_agent.config import DEFAULT_CONFIG_TEXT

    assert "input_mtok" in DEFAULT_CONFIG_TEXT and "per_mtok" not in DEFAULT_CONFIG_TEXT


def test_doctor_names_the_config_path_once_and_keeps_brackets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    port = free_port()
    with socket.socket() as blocker:  # a port taken by another program
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        (home / "config.toml").write_text(f"[proxy]\nlisten_port = {port}\nlisten_prot = 1\n")
        res = cli(home, "doctor")
    cfg = home / "config.toml"
    lines = res.stdout.splitlines()
    config_line = next(ln for ln in lines if ln.startswith("✗ config"))
    assert config_line == (f"✗ config         {cfg}:3: unknown key proxy.listen_prot (ignored); "
                           f"did you mean listen_port?")
    assert f"or set [proxy] listen_port in {cfg}" in res.stdout


@pytest.mark.slow
def test_restart_with_a_broken_config_keeps_the_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "home") as d:
        pid = d.pid
        cfg = d.home / "config.toml"
        good = cfg.read_text()
        broken = good.replace("[proxy]\n", "[proxy]\nlisten_prot = 1\n") + '\n[[capture.hosts]]\nhost = ""\n'
        cfg.write_text(broken)
        line = broken.splitlines().index('host = ""') + 1
        res = d.cli("restart")
        assert res.returncode == 1
        assert res.stderr == (f"halton-meter: error: {cfg}:{line}: capture.hosts entry 1: needs host = \"name[:port]\" "
                              f"The running daemon was left as it is.\n")
        assert d.status()["daemon"]["pid"] == pid
        cfg.write_text(good.replace("[proxy]\n", "[proxy]\nlisten_prot = 1\n"))
        res = d.cli("restart")
        assert res.returncode == 0, res.stderr
        assert f"! {cfg}:2: unknown key proxy.listen_prot (ignored); did you mean listen_port?" in res.stdout
        assert d.status()["daemon"]["pid"] != pid


@pytest.mark.slow
def test_port_taken_one_clear_message_and_no_stale_lock(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    port = free_port()
    (home / "config.toml").write_text(config_text(port))
    expected = (f"port {port} on 127.0.0.1 is already in use. Stop the program using it "
                f"(e.g. `lsof -i :{port}`), or set [proxy] listen_port in config.toml to a free port.")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        start = cli(home, "start")
        assert start.returncode == 1
        assert start.stderr == f"halton-meter: error: {expected}\n"
        run = cli(home, "run")  # right after: the failed daemon holds no lock
        assert run.returncode == 1
        assert run.stderr == f"halton-meter: {expected}\n"
        assert "--mode" not in (home / "daemon.log").read_text()


# -- the cloud commands ---------------------------------------------------------------


def test_cloud_commands_fail_before_saying_what_they_would_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args in (["cloud", "connect", "--no-browser"], ["cloud", "sync"], ["cloud", "whoami"]):
        res = cli(home, *args)
        assert res.returncode == 1
        assert res.stdout == "", args
        assert res.stderr == (
            "halton-meter: error: daemon not running: the cloud worker lives in the daemon. "
            "Check with `halton-meter status`, start it with `halton-meter start`.\n"
        )


def test_disconnect_when_not_paired_says_one_thing(tmp_path: Path) -> None:
    res = cli(tmp_path / "home", "cloud", "disconnect")
    assert res.returncode == 0
    assert res.stdout == "● This machine is not paired; nothing to disconnect.\n"


def test_paused_reason_is_explained_and_kept_in_json(tmp_path: Path) -> None:
    from hm_agent.store import Store
    from tests.test_cloud_offline import paired_home

    home = tmp_path / "home"
    paired_home(home)
    with Store(home / "db.sqlite") as store:
        store.set_cloud_state(paused=1, paused_reason="paused_unauthorised")
    res = cli(home, "cloud", "status")
    assert ("● Paused: the workspace revoked this machine's token; pair it again with "
            "`halton-meter cloud connect`\n") in res.stdout
    assert "paused_unauthorised" not in res.stdout


def test_cloud_help_descriptions_are_whole(tmp_path: Path) -> None:
    res = cli(tmp_path, "cloud", "--help")
    commands = res.stdout.split("Commands:")[1]
    assert "…" not in commands and "..." not in commands
    assert "The sync state: ACTIVE, DEGRADED, PAUSED or NOT-CONFIGURED." in res.stdout
    assert "Which workspace and machine this token belongs to." in res.stdout


def test_a_daemon_that_stops_mid_call_is_named(tmp_path: Path) -> None:
    """The daemon closed the socket without an answer (it was stopped during `cloud connect`)."""
    import threading

    from hm_agent.control import DaemonStopped, control_call
    from hm_agent.home import paths

    hp = paths(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    hp.control_socket.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(hp.control_socket))
    server.listen()

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    t = threading.Thread(target=hang_up)
    t.start()
    with pytest.raises(DaemonStopped) as info:
        control_call(hp, "cloud.connect.wait", timeout=5)
    t.join()
    server.close()
    assert str(info.value) == (f"the daemon stopped before answering (see {hp.log}). "
                               f"Start it with `halton-meter start`, then run the command again.")


@pytest.mark.slow
def test_user_errors_are_one_log_line_and_status_shows_no_stale_worker_state(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "home") as d:
        res = d.cli("cloud", "whoami")
        assert res.stderr == ("halton-meter: error: this machine is not paired (NOT-CONFIGURED): "
                              "run `halton-meter cloud connect`\n")
        log = (d.home / "daemon.log").read_text()
        assert "Traceback" not in log and " ERROR " not in log
        assert "INFO hm_agent.control: control command cloud.whoami refused: this machine is not paired" in log
        st = d.status()
        assert st["cloud"]["state"] == "NOT-CONFIGURED"
        assert "detail" not in st["components"]["cloud"]


def test_disconnect_with_a_broken_config_says_so_without_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cfg = home / "config.toml"
    cfg.write_text('[proxy]\nlisten_port = "x"\n')
    res = cli(home, "cloud", "disconnect")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (f"halton-meter: error: {cfg}:2: proxy.listen_port must be an integer, not 'x'\n"
                          "Fix config.toml first: `cloud disconnect` sets cloud.enabled = false in it.\n")
