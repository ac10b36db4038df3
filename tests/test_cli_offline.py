"""The CLI without a running daemon: status, report, env, help, and clear start errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hm_agent.store import Store, StoredRow
from tests.support.daemon import config_text, daemon_env, free_port, run_cli

COMMANDS = ["start", "stop", "run", "restart", "status", "env", "doctor", "report"]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, env=daemon_env(home))


def one_clear_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("halton-meter: error: ")
    return lines[0]


def test_status_with_daemon_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = cli(home, "status")
    assert res.returncode == 1
    assert "daemon  not running" in res.stdout and "halton-meter start" in res.stdout
    assert "NOT-CONFIGURED" in res.stdout
    st = json.loads(cli(home, "status", "--json").stdout)
    assert set(st) == {"version", "home", "daemon", "proxy", "rows", "database", "ca_cert", "machine_id", "cloud",
                       "components", "config_warnings", "budgets", "ratelimits"}
    assert st["daemon"]["running"] is False and st["proxy"]["bound"] is False
    assert st["proxy"]["port"] == 8090 and st["cloud"]["state"] == "NOT-CONFIGURED"
    assert not home.exists(), "status must not create the home"


def test_status_path_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from hm_cli.main import cli\n"
        "try:\n    cli(['status', '--json'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('mitmproxy', 'genai_prices', 'starlette', 'hm_agent.capture', 'anyio', 'trio',"
        " 'hm_proto', 'sqlalchemy', 'httpx') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=daemon_env(tmp_path / "h"), capture_output=True, text=True)
    assert "HEAVY []" in res.stderr, res.stderr


def test_versions_agree() -> None:
    import tomllib

    import hm_agent
    import hm_proto

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert hm_agent.__version__ == hm_proto.__version__ == pyproject["project"]["version"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str, tmp_path: Path) -> None:
    res = cli(tmp_path, command, "--help")
    assert res.returncode == 0
    assert "Example" in res.stdout


def test_top_level_help_lists_commands(tmp_path: Path) -> None:
    res = cli(tmp_path, "--help")
    assert res.returncode == 0
    for command in COMMANDS:
        assert command in res.stdout


def test_malformed_config_names_line_and_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[proxy]\nlisten_host = "127.0.0.1"\nlisten_port = 80 90\n')
    line = one_clear_line(cli(home, "start"))
    assert "config.toml:3" in line and "listen_port" in line


def test_corrupt_machine_json_is_kept_and_explained(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "machine.json").write_text('{"machine_id": "not-a-uuid"}')
    line = one_clear_line(cli(home, "start"))
    assert "machine.json is corrupt" in line
    assert (home / "machine.json").read_text() == '{"machine_id": "not-a-uuid"}'


def test_unwritable_home_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_clear_line(cli(blocker / "home", "start"))
    assert "cannot create" in line and "HALTON_METER_HOME" in line


def test_unknown_config_key_is_reported_by_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[proxy]\nlisten_prot = 9\n')
    res = cli(home, "status")
    assert "unknown key proxy.listen_prot" in res.stdout


def _row(i: int, model: str, cost: str | None, tokens: bool = True, provider: str = "openai") -> StoredRow:
    from datetime import UTC, datetime

    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return StoredRow(
        id=f"00000000-0000-4000-8000-{i:012d}", ts=ts, provider=provider, model=model, host="api.openai.com",
        endpoint="/v1/chat/completions", status=200, stream=False,
        input_tokens=100 if tokens else None, output_tokens=10 if tokens else None, cache_read_tokens=None,
        cache_write_tokens=None, reasoning_tokens=None, cost_usd=cost, price_version="t", latency_ms=1,
        ttfb_ms=1, flags="" if tokens else "usage_missing", row_json=b"{}",
    )


@pytest.fixture
def home_with_rows(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    with Store(home / "db.sqlite") as store:
        store.insert_rows([
            _row(1, "gpt-4o", "0.50"), _row(2, "gpt-4o", "0.25"),
            _row(3, "my-finetune", None), _row(4, "claude", None, tokens=False, provider="anthropic"),
        ])
    return home


def test_report_with_daemon_stopped(home_with_rows: Path) -> None:
    res = cli(home_with_rows, "report")
    assert res.returncode == 0, res.stderr
    assert "gpt-4o" in res.stdout and "$0.75" in res.stdout
    assert "unknown price" in res.stdout
    assert "1 call(s) have an unknown price" in res.stdout and "not counted as $0" in res.stdout
    assert "1 call(s) carried no token counts" in res.stdout


def test_report_json_and_csv(home_with_rows: Path) -> None:
    rep = json.loads(cli(home_with_rows, "report", "--json", "--by", "provider").stdout)
    by = {g["provider"]: g for g in rep["groups"]}
    assert by["openai"]["calls"] == 3 and by["openai"]["cost_usd"] == "0.75"
    assert by["openai"]["unknown_price_calls"] == 1
    assert by["anthropic"]["cost_usd"] is None and by["anthropic"]["usage_missing_calls"] == 1
    assert rep["total"]["calls"] == 4
    out = cli(home_with_rows, "report", "--csv", "--by", "day").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and rows[0]["calls"] == "4"


def test_report_date_range_excludes_other_days(home_with_rows: Path) -> None:
    rep = json.loads(cli(home_with_rows, "report", "--json", "--from", "2020-01-01", "--to", "2020-01-31").stdout)
    assert rep["groups"] == [] and rep["total"]["calls"] == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "yesterday"], "--since must look like"),
        (["--from", "11/01/2026"], "--from must be a date"),
        (["--since", "7d", "--from", "2026-11-01"], "either --since or --from/--to"),
        (["--from", "2026-11-05", "--to", "2026-11-01"], "is after --to"),
        (["--json", "--csv"], "one of --json, --csv and --html"),
    ],
)
def test_report_bad_options(tmp_path: Path, args: list[str], expected: str) -> None:
    assert expected in one_clear_line(cli(tmp_path / "home", "report", *args))


def test_report_on_an_empty_home(tmp_path: Path) -> None:
    res = cli(tmp_path / "home", "report")
    assert res.returncode == 0 and "No LLM calls recorded" in res.stdout


def test_env_before_first_start_says_what_to_do(tmp_path: Path) -> None:
    line = one_clear_line(cli(tmp_path / "home", "env"))
    assert "halton-meter start" in line


@pytest.mark.parametrize(
    ("shell", "pattern"),
    [("bash", "export HTTPS_PROXY='http://127.0.0.1:{port}'"), ("zsh", "export NO_PROXY='localhost,127.0.0.1,::1'"),
     ("fish", "set -gx HTTPS_PROXY 'http://127.0.0.1:{port}';"), ("powershell", "$env:HTTPS_PROXY = 'http://127.0.0.1:{port}'")],
)
def test_env_shells(tmp_path: Path, shell: str, pattern: str) -> None:
    from tests.support.tls import make_ca

    home = tmp_path / "home"
    (home / "mitmproxy").mkdir(parents=True)
    port = free_port()
    (home / "config.toml").write_text(config_text(port))
    ca = make_ca(tmp_path / "ca")
    (home / "mitmproxy" / "mitmproxy-ca-cert.pem").write_bytes(ca.ca_path.read_bytes())
    res = cli(home, "env", "--shell", shell)
    assert res.returncode == 0, res.stderr
    assert pattern.format(port=port) in res.stdout
    for var in ("HTTP_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"):
        assert var in res.stdout
    bundle_path = next(p for p in home.glob("ca-bundle*.pem"))  # named by content when the shell had a CA file
    bundle = bundle_path.read_bytes()
    assert ca.ca_path.read_bytes().strip() in bundle and bundle.count(b"BEGIN CERTIFICATE") > 50


def test_doctor_with_daemon_down_says_how_to_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(config_text(free_port()))
    res = cli(home, "doctor")
    assert res.returncode == 1
    assert "✗ daemon" in res.stdout and "fix: halton-meter start" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_stop_when_not_running(tmp_path: Path) -> None:
    res = cli(tmp_path / "home", "stop")
    assert res.returncode == 0 and "not running" in res.stdout
