"""Daemon lifecycle with real processes: restart, kill -9, draining on stop, start errors."""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import (
    Daemon,
    _wait_gone,
    capture_host_config,
    run_cli,
    running_daemon,
    start_daemon,
    stop_or_kill,
)
from tests.support.tls import CertAuthority, LocalTLSServer

pytestmark = pytest.mark.slow


def send(d: Daemon, upstream: LocalTLSServer, n: int = 1) -> None:
    ctx = ssl.create_default_context(cafile=str(d.ca_cert_path))
    with httpx.Client(proxy=d.proxy_url, verify=ctx, timeout=20) as client:
        for _ in range(n):
            r = client.post(f"{upstream.url}/v1/chat/completions", json={"model": "gpt-4o-mini"})
            assert r.status_code == 200


def count_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


def start(home: Path, ca: CertAuthority, upstream: LocalTLSServer, backend: str = "asyncio", **kw: object) -> Daemon:
    return start_daemon(home, backend, upstream_ca=ca.ca_path,
                        extra_config=capture_host_config([f"localhost:{upstream.port}"]), **kw)  # type: ignore[arg-type]


def test_restart_keeps_machine_id_and_rows(tmp_path: Path, ca: CertAuthority, upstream: LocalTLSServer) -> None:
    d = start(tmp_path / "home", ca, upstream, "asyncio")
    try:
        machine_id = d.status()["machine_id"]
        send(d, upstream, 2)
        assert d.wait_rows(2) == 2
        again = d.cli("start")
        assert again.returncode == 0 and "already running" in again.stdout
        res = d.cli("restart", "--backend", "trio")
        assert res.returncode == 0, res.stderr
        st = d.status()
        assert st["daemon"]["backend"] == "trio" and st["machine_id"] == machine_id
        send(d, upstream, 1)
        assert d.wait_rows(3) == 3
    finally:
        stop_or_kill(d)
    assert json.loads((d.home / "machine.json").read_text())["machine_id"] == machine_id


def test_kill_9_loses_no_committed_row(tmp_path: Path, ca: CertAuthority, upstream: LocalTLSServer) -> None:
    d = start(tmp_path / "home", ca, upstream)
    try:
        send(d, upstream, 20)
        assert d.wait_rows(20) == 20
        d.kill9()
        conn = sqlite3.connect(d.db_path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        assert count_rows(d.db_path) == 20
        status = d.cli("status")
        assert status.returncode == 1 and "not running" in status.stdout
        # A stale socket and pid file do not stop a new start.
        d2 = start_daemon(d.home, "trio", write_config=False, port=d.proxy_port)
        send(d2, upstream, 1)
        assert d2.wait_rows(21) == 21
    finally:
        stop_or_kill(d)


def test_stop_drains_rows_waiting_on_a_locked_database(tmp_path: Path, ca: CertAuthority, upstream: LocalTLSServer) -> None:
    d = start(tmp_path / "home", ca, upstream, "trio")
    try:
        send(d, upstream, 1)
        assert d.wait_rows(1) == 1
        locker = subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
             "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(1.5); c.execute('ROLLBACK')",
             str(d.db_path)],
            stdout=subprocess.PIPE, text=True,
        )
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        send(d, upstream, 5)
        assert d.status()["rows"]["pending"] == 5
        res = d.cli("stop")
        locker.wait(10)
        assert res.returncode == 0, res.stderr
        assert count_rows(d.db_path) == 6
    finally:
        stop_or_kill(d)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        home = tmp_path / "home"
        with pytest.raises(RuntimeError) as err:
            start_daemon(home, "asyncio", port=port)
    msg = str(err.value)
    assert f"port {port} on 127.0.0.1 is already in use" in msg and "listen_port" in msg
    assert "Traceback" not in msg
    assert not (home / "daemon.json").exists()


def test_foreground_run_stops_on_sigterm(tmp_path: Path) -> None:
    from tests.support.daemon import config_text, daemon_env, free_port

    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(config_text(port))
    proc = subprocess.Popen([sys.executable, "-m", "hm_cli.main", "run", "--backend", "trio"],
                            env=daemon_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (home / "daemon.json").exists():
            time.sleep(0.05)
        assert run_cli(home, "status").returncode == 0
        proc.terminate()
        assert proc.wait(20) == 0
        assert not (home / "daemon.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_running_daemon_helper_cleans_up(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "home", "asyncio") as d:
        pid = d.pid
        assert pid
    assert _wait_gone(pid, 5)  # exited (a zombie under a non-reaping init counts as gone)
