"""Hostile inputs against the real daemon (issue 10, items 12-17): each test failed before its fix.

One daemon per backend for the module, a local TLS server as the "LLM API".
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import Daemon, capture_host_config, running_daemon
from tests.support.tls import CertAuthority, LocalTLSServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def daemon(request: pytest.FixtureRequest, ca: CertAuthority, upstream: LocalTLSServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp(f"hard-{request.param}")
    extra = capture_host_config([f"localhost:{upstream.port}"])
    with running_daemon(home, request.param, upstream_ca=ca.ca_path, extra_config=extra) as d:
        yield d


def chat(d: Daemon, upstream: LocalTLSServer, model: str = "gpt-4o-mini") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    ctx = ssl.create_default_context(cafile=str(d.ca_cert_path))
    with httpx.Client(proxy=d.proxy_url, verify=ctx, timeout=20) as client:
        return client.post(f"{upstream.url}/v1/chat/completions", json=body)


def raw_control(d: Daemon, line: bytes, timeout: float = 15.0) -> dict[str, Any]:
    """Send raw bytes on the control socket and read the one-line reply."""
    from hm_agent.home import paths

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(paths(d.home).control_socket))
        try:
            s.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and closed before reading all of it
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)  # type: ignore[no-any-return]


# -- item 14: the control socket ------------------------------------------------------


@pytest.mark.parametrize("line", [
    pytest.param(b"[" * 100_000 + b"\n", id="deep-array"),
    pytest.param(b'{"cmd": "ping", "args": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}\n", id="deep-args"),
    pytest.param(b'{"cmd": "ping", "args": {"x": "' + b"y" * 200_000 + b'"}}\n', id="too-long"),
    pytest.param(b"\xff\xfe\x00garbage\n", id="not-utf8"),
    pytest.param(b'{"cmd": ["ping"], "args": []}\n', id="wrong-types"),
])
def test_control_socket_answers_hostile_lines_and_the_proxy_survives(
        daemon: Daemon, upstream: LocalTLSServer, line: bytes) -> None:
    reply = raw_control(daemon, line)
    assert reply["ok"] is False and reply["error"]
    from hm_agent.control import control_call

    assert control_call(daemon.home, "ping")["pid"] == daemon.pid
    assert chat(daemon, upstream).status_code == 200


@pytest.mark.anyio
async def test_a_failing_command_answers_only_its_caller(tmp_path: Any) -> None:
    """A handler that raises, or returns what JSON cannot encode: an error reply, and the server goes on."""
    import anyio

    from hm_agent.control import (
        COMMANDS,
        ControlError,
        control_call,
        register_command,
        serve_forever,
    )
    from hm_agent.home import paths

    async def boom(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        raise RecursionError("maximum recursion depth exceeded")

    async def circular(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        return loop

    async def fine(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        return {"fine": True}

    for name, handler in (("test.boom", boom), ("test.circular", circular), ("test.fine", fine)):
        register_command(name, handler)
    sock_path = paths(tmp_path).control_socket
    try:
        listener = await anyio.create_unix_listener(sock_path)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(serve_forever, listener, None)
            for name, expected in (("test.boom", "test.boom failed"), ("test.circular", "could not be encoded")):
                with pytest.raises(ControlError, match=expected):
                    await anyio.to_thread.run_sync(lambda n=name: control_call(tmp_path, n, timeout=5))
            assert await anyio.to_thread.run_sync(lambda: control_call(tmp_path, "test.fine", timeout=5)) == {"fine": True}
            tg.cancel_scope.cancel()
    finally:
        for name in ("test.boom", "test.circular", "test.fine"):
            COMMANDS.pop(name, None)


# -- item 12: one bad upstream answer costs no other row ---------------------------------


def test_absurd_token_counts_are_flagged_and_cost_no_other_row(daemon: Daemon, upstream: LocalTLSServer) -> None:
    """prompt_tokens = 2**63 among 5 normal calls: 6 rows, the absurd one flagged with tokens null."""
    import sqlite3

    model, good = f"absurd-{daemon.backend}", f"good-{daemon.backend}"
    upstream.usage_by_model[model] = {"prompt_tokens": 2**63, "completion_tokens": 5, "total_tokens": 2**63 + 5}
    for n in range(6):
        assert chat(daemon, upstream, model if n == 3 else good).status_code == 200

    def by_model() -> dict[str, list[Any]]:
        conn = sqlite3.connect(f"file:{daemon.db_path}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT model, input_tokens, output_tokens, cost_usd, flags, row_json"
                                 " FROM requests WHERE model IN (?, ?)", (model, good)).fetchall()
        finally:
            conn.close()
        out: dict[str, list[Any]] = {model: [], good: []}
        for row in found:
            out[row[0]].append(row[1:])
        return out

    deadline = time.monotonic() + 10
    while sum(map(len, (rows := by_model()).values())) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    bad = rows[model]
    assert len(rows[good]) == 5 and all(r[0] == 12 for r in rows[good])
    assert len(bad) == 1
    input_tokens, output_tokens, cost, flags, row_json = bad[0]
    assert (input_tokens, output_tokens, cost) == (None, None, None)
    assert "implausible_usage" in flags.split()
    assert json.loads(row_json)["input_tokens"] is None
    assert daemon.status()["rows"]["dropped"] == 0


def _call(usage: Any, n: int) -> Any:
    from hm_agent.writer import CapturedCall

    return CapturedCall(id=f"00000000-0000-4000-8000-{n:012d}", ts="2026-11-29T10:00:00.000Z",
                        usage=usage, latency_ms=10, ttfb_ms=5)


def _usage(**tokens: Any) -> Any:
    from hm_agent.capture.tap import CapturedUsage

    return CapturedUsage(provider="openai", model="gpt-4o-mini", host="api.openai.com",
                         endpoint="/v1/chat/completions", status=200, stream=False, **tokens)


def test_writer_keeps_the_good_rows_of_a_batch_and_quarantines_the_bad_one(tmp_path: Any) -> None:
    """A row SQLite refuses (2**63 reached the writer by a bug upstream of it) costs only itself."""
    import sqlite3

    from hm_agent.writer import RowWriter

    writer = RowWriter(tmp_path / "db.sqlite")
    writer.start()
    for n in range(6):
        tokens = {"input_tokens": 2**63 if n == 2 else 10, "output_tokens": 5}
        writer.submit(_call(_usage(**tokens), n))
    assert writer.stop(timeout=10)
    assert (writer.written, writer.quarantined, writer.dropped) == (5, 1, 0)
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 5
        (qid, reason, row_json), = conn.execute("SELECT id, reason, row_json FROM write_quarantine").fetchall()
    finally:
        conn.close()
    assert qid.endswith("000000000002") and "OverflowError" in reason
    assert json.loads(row_json)["input_tokens"] == 2**63


def test_capture_flags_counts_beyond_the_bound() -> None:
    """Each dialect's counts go through one bound: above 10^12 the tokens are null and flagged."""
    from hm_agent.capture.usage import MAX_TOKENS, Tokens, implausible

    assert not implausible(Tokens(input_tokens=MAX_TOKENS, output_tokens=0))
    assert implausible(Tokens(input_tokens=1, reasoning_tokens=MAX_TOKENS + 1))
    assert implausible(Tokens(cache_write_1h_tokens=2**63))


@pytest.mark.parametrize(("prompt_tokens", "flagged", "recorded"), [
    (12, False, 12),
    (12.0, False, 12),  # an integral float from a loose gateway is still a count
    (-5, True, None),
    (1.5, True, None),
    (2**70, True, None),  # beyond 64 bits: JSON parsers hand it over as a float
    (10**12 + 1, True, None),
    ("12", False, None),  # not a number: unknown, as before
])
def test_impossible_counts_from_a_real_tap_are_flagged(prompt_tokens: Any, flagged: bool, recorded: Any) -> None:
    from hm_agent.capture import open_call

    tap = open_call("api.openai.com", "POST", "/v1/chat/completions", "", {}, b'{"model":"gpt-4o-mini"}')
    assert tap is not None
    tap.response_headers(200, {"content-type": "application/json"})
    body = {"model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5}}
    tap.feed(json.dumps(body).encode())
    usage = tap.finish(complete=True)
    assert ("implausible_usage" in usage.flags) is flagged
    assert usage.input_tokens == recorded
    assert usage.output_tokens == (None if flagged else 5)


def test_a_store_made_before_write_quarantine_gets_the_table(tmp_path: Any) -> None:
    import sqlite3

    from hm_agent.store import Store

    db = tmp_path / "db.sqlite"
    with Store(db) as store:
        store._conn.execute("DROP TABLE write_quarantine")  # the previous schema
    with Store(db) as store:
        assert store.count_write_quarantined() == 0
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 0
    finally:
        conn.close()


# -- item 13: `stop` on a full disk --------------------------------------------------------


def test_stop_on_a_full_disk_reports_the_unwritten_rows_and_the_next_start_writes_them(
        tmp_path: Any, ca: CertAuthority, upstream: LocalTLSServer) -> None:
    """A real write failure: the daemon runs under RLIMIT_FSIZE, so SQLite cannot grow its files.

    `stop` must say how many rows are not in db.sqlite and where they are, exit
    non-zero; the next start (no limit) writes every one of them.
    """
    import resource
    import sqlite3
    import subprocess

    from tests.support.daemon import HALTON_METER, config_text, daemon_env, free_port, stop_or_kill

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    port = free_port()
    (home / "config.toml").write_text(config_text(port, ca.ca_path, capture_host_config([f"localhost:{upstream.port}"])))
    env = daemon_env(home)
    limit = 96 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    d = Daemon(home=home, proxy_port=port, backend="asyncio", env=env)
    # A first run writes the CA and trust bundles (larger than the limit); they are only rewritten when stale.
    assert d.cli("start").returncode == 0 and d.cli("stop").returncode == 0
    started = subprocess.run([*HALTON_METER, "start"], env=env, capture_output=True, text=True, timeout=90,
                             preexec_fn=small_files)
    assert started.returncode == 0, started.stderr

    def in_db() -> int:
        conn = sqlite3.connect(f"file:{d.db_path}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
        finally:
            conn.close()

    sent = 0
    try:
        # Fill the files until the writer reports the failure, then send a few more.
        problems: list[str] = []
        while sent < 400 and not any("database write failed" in p for p in problems):
            for _ in range(10):
                assert chat(d, upstream, "full-disk").status_code == 200
                sent += 1
            time.sleep(0.3)
            problems = d.status()["daemon"]["problems"]
        assert any("database write failed" in p for p in problems), "the limit never made a write fail"
        for _ in range(5):
            assert chat(d, upstream, "full-disk").status_code == 200
            sent += 1
        time.sleep(0.5)
        written = in_db()
        assert written < sent
        stop = d.cli("stop", timeout=90)
        assert stop.returncode == 1, stop.stdout + stop.stderr
        assert f"{sent - written} captured rows could not be written" in stop.stderr, stop.stderr
        assert str(home / "unwritten-rows.jsonl") in stop.stderr
        assert "every captured row is on disk" not in stop.stdout
        assert (home / "unwritten-rows.jsonl").stat().st_mode & 0o777 == 0o600
    finally:
        stop_or_kill(d)
    # The next start, with room again, writes them and removes the file.
    d = Daemon(home=home, proxy_port=port, backend="asyncio", env=env)
    assert d.cli("start").returncode == 0
    try:
        assert d.wait_rows(sent) == sent
        deadline = time.monotonic() + 10
        while (home / "unwritten-rows.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (home / "unwritten-rows.jsonl").exists()
        stop = d.cli("stop")
        assert stop.returncode == 0 and "every captured row is on disk" in stop.stdout
    finally:
        stop_or_kill(d)


# -- item 15: the socket directory of a long home ---------------------------------------------


def _long_home_env(tmp_path: Any, xdg: Any = None) -> tuple[Any, dict[str, str]]:
    from tests.support.daemon import daemon_env

    home = tmp_path / ("h" * 110)
    home.mkdir(mode=0o700)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = daemon_env(home)
    env["TMPDIR"] = str(tmp)
    env.pop("XDG_RUNTIME_DIR", None)
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = str(xdg)
    return home, env


def test_xdg_runtime_dir_is_preferred_when_it_is_private(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import shutil
    import tempfile

    from hm_agent.home import paths

    deep = tmp_path / ("d" * 120)
    # A short runtime dir, like /run/user/<uid>: pytest's tmp_path can be too long for a socket.
    run = Path(tempfile.mkdtemp(prefix="hmrun-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(run, ignore_errors=True))
    run.chmod(0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    assert paths(deep).control_socket.parent == run / "halton-meter"
    run.chmod(0o755)  # not private: not used
    assert paths(deep).control_socket.parent == tmp_path / "tmp" / f"halton-meter-{os.getuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths(deep).control_socket.parent == tmp_path / "tmp" / f"halton-meter-{os.getuid()}"


@pytest.mark.parametrize("squat", ["open-to-others", "another-user", "symlink"])
def test_a_squatted_socket_directory_is_refused(tmp_path: Any, squat: str) -> None:
    """Another user made $TMPDIR/halton-meter-<uid> first: start refuses it, with the fix."""
    from tests.support.daemon import run_cli

    home, env = _long_home_env(tmp_path)
    squatted = tmp_path / "tmp" / f"halton-meter-{os.getuid()}"
    if squat == "open-to-others":
        squatted.mkdir()
        squatted.chmod(0o777)
    elif squat == "another-user":
        if os.getuid() != 0:
            pytest.skip("making a directory owned by another user needs root (CI runs as root)")
        squatted.mkdir(mode=0o700)
        os.chown(squatted, 65534, 65534)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        squatted.symlink_to(tmp_path / "elsewhere")
    done = run_cli(home, "start", env=env)
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        assert str(squatted) in done.stderr and "impersonat" in done.stderr and "Traceback" not in done.stderr
        assert not list(squatted.glob("*.sock")) and not list((tmp_path / "elsewhere").glob("*.sock"))
    finally:
        run_cli(home, "stop", env=env)


def test_the_client_sends_nothing_to_a_socket_it_does_not_own(tmp_path: Any) -> None:
    """A socket planted by another user where the daemon's would be: no `stop`, no pairing code."""
    import threading

    from tests.support.daemon import run_cli

    if os.getuid() != 0:
        pytest.skip("planting a socket owned by another user needs root (CI runs as root)")
    home, env = _long_home_env(tmp_path)
    directory = tmp_path / "tmp" / f"halton-meter-{os.getuid()}"
    directory.mkdir(mode=0o700)
    import hashlib

    sock_path = directory / (hashlib.sha256(os.fsencode(home)).hexdigest()[:20] + ".sock")
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    os.chown(sock_path, 65534, 65534)
    server.listen()
    server.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                received.append(conn.recv(65536))
                conn.sendall(b'{"ok": true, "result": {"pid": 1, "state": "pending", "user_code": "FAKE-CODE"}}\n')

    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        halt = run_cli(home, "stop", env=env)
        assert halt.returncode == 1 and "refusing to talk" in halt.stderr, halt.stdout + halt.stderr
        st = json.loads(run_cli(home, "status", "--json", env=env).stdout)
        assert any("refusing to talk" in p for p in st["daemon"]["problems"])
        connect = run_cli(home, "cloud", "connect", "--no-browser", env=env)
        assert "FAKE-CODE" not in connect.stdout and connect.returncode != 0
        assert received == []
    finally:
        stop.set()
        thread.join(5)
        server.close()


# -- rows the daemon builds are rows the backend takes (api.md bounds) -------------------------


def test_cost_is_cut_to_twelve_decimals() -> None:
    from hm_agent.writer import _cost_12

    assert _cost_12("0.000000123456789012345") == "0.000000123457"
    assert _cost_12("1.5") == "1.5" and _cost_12("0") == "0"


def test_rows_built_from_hostile_upstream_values_pass_the_backends_validation() -> None:
    """Whatever the upstream said (status, names, durations), the uploaded Row is within api.md's bounds."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from hm_agent.writer import build_row
    from hm_proto.server import parse_row

    @settings(max_examples=200, deadline=None)
    @given(
        status=st.integers(0, 1000),
        model=st.text(max_size=2000),
        endpoint=st.text(max_size=700),
        latency=st.integers(0, 10**12),
        tokens=st.one_of(st.none(), st.integers(0, 10**12)),
    )
    def check(status: int, model: str, endpoint: str, latency: int, tokens: int | None) -> None:
        from hm_agent.capture.tap import CapturedUsage
        from hm_agent.writer import CapturedCall

        usage = CapturedUsage(provider="openai", model=model, host="h", endpoint=endpoint, status=status,
                              stream=False, input_tokens=tokens, output_tokens=tokens)
        call = CapturedCall(id="00000000-0000-4000-8000-000000000001", ts="2026-11-29T10:00:00.000Z",
                            usage=usage, latency_ms=latency, ttfb_ms=latency)
        stored = build_row(call, [])
        row = parse_row(json.loads(stored.row_json))
        assert 100 <= row.status <= 599
        if not 100 <= status <= 599:
            assert ("no_response" if status == 0 else "bad_status") in stored.flags.split()

    check()


def test_duration_arguments_of_commands_are_bounded() -> None:
    """`cloud.connect.wait` with wait=inf must not hold a control-socket slot for good."""
    from hm_agent.control import seconds_arg

    assert seconds_arg({"wait": 5}, "wait", 25.0, 60.0) == 5.0
    for bad in (float("inf"), float("nan"), 1e308, -1, True, "10", None):
        assert seconds_arg({"wait": bad}, "wait", 25.0, 60.0) == 25.0


def test_a_home_owned_by_another_user_is_refused(tmp_path: Any) -> None:
    """Its owner could read the rows and plant a socket: start says so, in one line."""
    from tests.support.daemon import daemon_env, run_cli

    if os.getuid() != 0:
        pytest.skip("making a directory owned by another user needs root (CI runs as root)")
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    done = run_cli(home, "start", env=daemon_env(home))
    assert done.returncode == 1 and "belongs to uid 65534" in done.stderr and "Traceback" not in done.stderr
    assert not (home / "db.sqlite").exists()


def test_an_open_home_is_made_private_and_the_daemon_creates_private_files(
        tmp_path: Any, ca: CertAuthority, upstream: LocalTLSServer) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)
    extra = capture_host_config([f"localhost:{upstream.port}"])
    with running_daemon(home, upstream_ca=ca.ca_path, extra_config=extra) as d:
        assert chat(d, upstream).status_code == 200
        assert d.wait_rows(1) == 1
    assert home.stat().st_mode & 0o777 == 0o700
    exposed = [p for p in home.rglob("*") if p.is_file() and p.stat().st_mode & 0o077
               and p.name not in ("machine.json", "config.toml", "mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer",
                                  "mitmproxy-ca-cert.p12", "mitmproxy-dhparam.pem")
               and not p.name.startswith(("ca-bundle", "upstream-ca", "node-"))]
    assert exposed == []


def test_a_lock_held_past_the_drain_timeout_spills_to_the_fallback_and_the_next_start_replays(tmp_path: Any) -> None:
    """The home cannot take the spill file either: the second place does; the next writer replays it."""
    import sqlite3

    from hm_agent.writer import RowWriter

    db = tmp_path / "db.sqlite"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    first_choice = blocker / "unwritten-rows.jsonl"  # cannot be created: its parent is a file
    fallback = tmp_path / "run" / "spill.jsonl"
    writer = RowWriter(db, spill_paths=[first_choice, fallback])
    writer.start()
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        for n in range(7):
            writer.submit(_call(_usage(input_tokens=10, output_tokens=5), n))
        assert writer.stop(timeout=0.5) is False
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert writer.stop_outcome()["unwritten"] == 7 and writer.lost == 0
    assert writer.spilled_to == fallback and fallback.stat().st_mode & 0o777 == 0o600
    again = RowWriter(db, spill_paths=[first_choice, fallback])
    again.start()
    assert again.stop(timeout=10)
    assert again.recovered == 7 and not fallback.exists()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 7
    finally:
        conn.close()
