"""Waiting shows progress: `cloud sync` over a backlog (a bar under a pseudo-terminal,
plain lines on a pipe), `cloud connect` retries as they happen and gives up at once on a
URL that cannot work, and says how long the code is valid."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cloudserver import running_cloud
from tests.support.daemon import Daemon, running_daemon
from tests.support.faultproxy import FaultProxy
from tests.support.seed import pair_daemon, seed_rows

EMAIL, PASSWORD, WORKSPACE = "wait@example.com", "waiting-pass-1", "waiters"
CLI = [sys.executable, "-m", "hm_cli.main"]


def run_in_pty(args: list[str], env: dict[str, str], timeout: float = 120.0) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout and stderr; return (exit code, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env={**env, "COLUMNS": "110", "TERM": "xterm-256color"}, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


# -- pure pieces ----------------------------------------------------------------------


def test_progress_line_and_code_validity(monkeypatch: pytest.MonkeyPatch) -> None:
    from hm_cli.cloud import _valid_for
    from hm_cli.cloud_ui import SyncProgress

    p = SyncProgress(5000)
    p.started = 100.0
    p.update(3800, 103.0)
    assert p.line(103.0) == "… 1,200/5,000 rows uploaded (400 rows/s, about 10 s left)"
    p.update(3900, 104.0)  # 100 new rows captured meanwhile: the total grows, the bar never goes back
    assert (p.done, p.total) == (1200, 5100)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert _valid_for(600, now=1_795_000_000.0) == "The code is valid for 10 minutes, until 11:16."
        assert _valid_for(45, now=1_795_000_000.0) == "The code is valid for 45 s, until 11:07."
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# -- cloud sync over a backlog ----------------------------------------------------------


@pytest.mark.slow
def test_cloud_sync_shows_a_bar_on_a_terminal_and_lines_on_a_pipe(tmp_path: Path) -> None:
    with running_cloud(tmp_path / "cloud") as cloud, FaultProxy(cloud.base_url) as proxy, \
            running_daemon(tmp_path / "home") as d:
        cloud.create_user(EMAIL, PASSWORD, WORKSPACE)
        pair_daemon(d, cloud, EMAIL, PASSWORD, WORKSPACE, base_url=proxy.base_url)
        _wait_ready(d)

        proxy.hold(0.4)  # each batch answer 0.4 s late: the upload takes seconds
        seed_rows(d.db_path, 6000)
        code, raw = run_in_pty(["cloud", "sync"], d.env)
        out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # the bar, without its colours
        assert code == 0, out
        assert re.search(r"Uploading ━+\S* +\d+/6000 rows [\d,]+ rows/s ETA \d+:\d\d:\d\d", out), out
        assert "\r" in raw  # redrawn in place
        assert "POST /v1/requests/batch → 200 OK" in out

        proxy.hold(1.0)  # up to three batches are in flight: three rounds of 1 s, past the 2 s line
        seed_rows(d.db_path, 9000, day="2026-11-25")
        piped = d.cli("cloud", "sync")
        assert piped.returncode == 0, piped.stderr
        lines = piped.stdout.splitlines()
        assert lines[0] == "… Uploading 9,000 unsynced rows" or lines[0].startswith("… Uploading ")
        progress = [ln for ln in lines if " rows uploaded (" in ln]
        assert progress, piped.stdout
        assert all(re.fullmatch(r"… [\d,]+/[\d,]+ rows uploaded \([\d,]+ rows/s, (about \d+ s left|about "
                                r"\d+ min \d\d s left|finishing)\)", ln) for ln in progress), progress
        assert "\x1b[" not in piped.stdout  # no terminal codes on a pipe
        proxy.hold(0)


def _wait_ready(d: Daemon, timeout: float = 30.0) -> None:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = json.loads(d.cli("cloud", "status", "--json").stdout)
        if st.get("state") == "ACTIVE" and "consecutive_failures" in st:
            return
        time.sleep(0.1)
    raise AssertionError("the cloud worker did not start")


# -- cloud connect ----------------------------------------------------------------------


@pytest.mark.slow
def test_connect_shows_retries_and_gives_up_at_once_when_the_url_cannot_work(tmp_path: Path) -> None:
    import socket

    with running_cloud(tmp_path / "cloud") as cloud, running_daemon(tmp_path / "home") as d:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        refused = d.cli("cloud", "connect", "--no-browser", "--base-url", f"http://127.0.0.1:{closed}")
        assert refused.returncode == 1
        retries = [ln for ln in refused.stdout.splitlines() if ln.startswith("  attempt ")]
        assert [ln.split(",")[0] for ln in retries] == [f"  attempt {n}/5" for n in (2, 3, 4, 5)]
        assert re.fullmatch(rf"  attempt 2/5, retrying in \d+ s: connect: cannot connect to "
                            rf"http://127\.0\.0\.1:{closed}: connection refused \(nothing listens there\)", retries[0]), retries[0]
        assert "check the network and --base-url" in refused.stderr

        port = cloud.base_url.rsplit(":", 1)[1]
        tls = d.cli("cloud", "connect", "--no-browser", "--base-url", f"https://127.0.0.1:{port}")
        assert tls.returncode == 1 and "attempt" not in tls.stdout
        assert tls.stderr.startswith(f"halton-meter: error: cannot get a pairing code from https://127.0.0.1:{port} "
                                     f"(connect: TLS with https://127.0.0.1:{port} failed")
        assert tls.stderr.rstrip().endswith("check --base-url: the scheme (http:// or https://) and the host name")

        itself = d.cli("cloud", "connect", "--no-browser", "--base-url", d.proxy_url)
        assert itself.returncode == 1 and itself.stderr == (
            f"halton-meter: error: {d.proxy_url} is this machine's metering proxy, not a cloud backend: pass the "
            f"backend's URL (e.g. http://127.0.0.1:8787 for `halton-meter-cloud serve --port 8787`)\n")

        dns = d.cli("cloud", "connect", "--no-browser", "--base-url", "http://no-such-host.invalid")
        assert dns.returncode == 1 and "attempt" not in dns.stdout
        assert "(connect: no such host: http://no-such-host.invalid" in dns.stderr


@pytest.mark.slow
def test_connect_says_how_long_the_code_is_valid(tmp_path: Path) -> None:
    with running_cloud(tmp_path / "cloud") as cloud, running_daemon(tmp_path / "home") as d:
        proc = subprocess.Popen([*CLI, "cloud", "connect", "--no-browser", "--base-url", cloud.base_url],
                                env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        seen = []
        try:
            for line in proc.stdout:
                seen.append(line)
                if "valid for" in line:
                    break
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert re.fullmatch(r"● The code is valid for 10 minutes, until \d\d:\d\d\.\n", seen[-1]), seen
        assert seen[-2].startswith("● Approve at: ") and seen[-3].startswith("● Pairing code: ")


def test_report_shows_it_is_reading_on_a_terminal_only(tmp_path: Path) -> None:
    from tests.support.daemon import daemon_env, run_cli

    home = tmp_path / "home"
    home.mkdir()
    seed_rows(home / "db.sqlite", 2000)
    env = daemon_env(home)
    code, out = run_in_pty(["report", "--from", "2026-11-20", "--to", "2026-11-26"], env)
    assert code == 0 and "Reading the database…" in out, out
    piped = run_cli(home, "report", "--from", "2026-11-20", "--to", "2026-11-26", env=env)
    assert "Reading" not in piped.stdout + piped.stderr and "LLM spend" in piped.stdout
