"""``halton-meter-cloud`` as an operator meets it: one-line errors, defaults, create-user."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cloudserver import cloud_command


def run_cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cloud_command(*args), input=stdin, capture_output=True, text=True, timeout=60, env=env
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("halton-meter-cloud: error: ")
    for phrase in phrases:
        assert phrase in lines[0]


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert_one_line_error(done, f"port {port} on 127.0.0.1 is already in use", "--port")


@pytest.mark.parametrize(
    ("db_url", "phrase"),
    [
        ("mysql://root@localhost/db", "unsupported database 'mysql'"),
        ("not a url at all", "cannot parse database URL"),
        ("sqlite://", "names no file"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/nothing", "cannot open database"),
    ],
)
def test_bad_database_urls_are_one_line_errors(db_url: str, phrase: str) -> None:
    done = run_cli("serve", "--port", "0", "--db", db_url)
    assert_one_line_error(done, phrase, "sqlite:///PATH" if "open" not in phrase else "--db")


def test_a_bad_audit_retention_is_a_one_line_error(tmp_path: Path) -> None:
    done = run_cli("serve", "--port", "0", "--db", f"sqlite:///{tmp_path / 'c.sqlite'}", "--audit-days", "7")
    assert_one_line_error(done, "--audit-days '7'", "from 30 to 36500, or 0")


def test_serve_defaults_to_loopback_and_the_user_data_dir(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "out.txt"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            cloud_command("serve", "--port", "0"), stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 30
        while (
            "listening on" not in out.read_text()
            and time.monotonic() < deadline
            and process.poll() is None
        ):
            time.sleep(0.05)
        line = out.read_text()
        assert re.search(
            r"listening on http://127\.0\.0\.1:\d+ \(pages at http://127\.0\.0\.1:\d+", line
        ), line
        assert (tmp_path / "data" / "halton-meter-cloud" / "cloud.sqlite").exists()
    finally:
        process.terminate()
        process.wait(10)


def test_create_user(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.sqlite'}"
    made = run_cli(
        "create-user",
        "Ann@Example.com",
        "--workspace",
        "acme",
        "--password-stdin",
        "--db",
        db,
        stdin="long-password\n",
    )
    assert (
        made.returncode == 0 and made.stdout.strip() == "created ann@example.com in workspace acme"
    )
    again = run_cli(
        "create-user",
        "ann@example.com",
        "--workspace",
        "other",
        "--password-stdin",
        "--db",
        db,
        stdin="whatever-pass\n",
    )
    assert again.returncode == 0 and "added to workspace other" in again.stdout

    assert_one_line_error(
        run_cli("create-user", "b@example.com", "--workspace", "acme", "--db", db),
        "--password-stdin",
    )
    assert_one_line_error(
        run_cli(
            "create-user",
            "b@example.com",
            "--workspace",
            "Bad Slug",
            "--password-stdin",
            "--db",
            db,
            stdin="long-password\n",
        ),
        "workspace slug 'Bad Slug' is not valid",
    )
    assert_one_line_error(
        run_cli(
            "create-user",
            "b@example.com",
            "--workspace",
            "acme",
            "--password-stdin",
            "--db",
            db,
            stdin="short\n",
        ),
        "at least 8 characters",
    )


def test_listening_socket_is_tcp_so_responses_are_not_nagled() -> None:
    """asyncio sets TCP_NODELAY on accepted sockets only if the listener says TCP."""
    from hm_cloud.cli import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
