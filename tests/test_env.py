"""`halton-meter env`: both cases of proxy variables, the user's CA kept, loopback
capture hosts metered, --unset restoring the shell, and notes as shell comments.

Each test runs the real CLI inside a real bash, evaluating its output as a user would.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import certifi
import pytest

from tests.support.daemon import HALTON_METER, config_text, daemon_env, free_port
from tests.support.tls import make_ca

NODE_PRELOAD = Path(__file__).parents[1] / "src" / "hm_agent" / "node-proxy.cjs"
CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


def _home(tmp_path: Path, extra_config: str = "") -> tuple[Path, int]:
    home = tmp_path / "home"
    (home / "mitmproxy").mkdir(parents=True)
    port = free_port()
    (home / "config.toml").write_text(config_text(port, extra_config=extra_config))
    ca = make_ca(tmp_path / "mitm-ca")
    (home / "mitmproxy" / "mitmproxy-ca-cert.pem").write_bytes(ca.ca_path.read_bytes())
    return home, port


def _bash(home: Path, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = daemon_env(home)
    for name in (*CA_VARS, "NODE_OPTIONS", "no_proxy", "NO_PROXY"):
        base.pop(name, None)
    base.update(env or {})
    hm = " ".join(HALTON_METER)
    return subprocess.run(["bash", "-c", script.replace("HM", hm)], env=base, capture_output=True, text=True,
                          timeout=120)


def _vars(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


def test_env_exports_both_cases_and_node_settings(tmp_path: Path) -> None:
    home, port = _home(tmp_path)
    res = _bash(home, 'eval "$(HM env --shell bash)" && env')
    assert res.returncode == 0, res.stderr
    got = _vars(res.stdout)
    proxy = f"http://127.0.0.1:{port}"
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        assert got[name] == proxy
    assert got["NO_PROXY"] == got["no_proxy"] == "localhost,127.0.0.1,::1"
    assert got["NODE_USE_ENV_PROXY"] == "1"
    preload = home / "node-proxy.cjs"
    assert got["NODE_OPTIONS"] == f"--require {preload}"
    assert preload.read_bytes() == NODE_PRELOAD.read_bytes()
    assert got["SSL_CERT_FILE"] == str(home / "ca-bundle.pem")
    assert got["NODE_EXTRA_CA_CERTS"] == str(home / "mitmproxy" / "mitmproxy-ca-cert.pem")
    assert not any(k.startswith("HALTON_METER_SAVED_") for k in got)


def test_env_keeps_a_corporate_ca_and_unset_restores_the_shell(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    corp = make_ca(tmp_path / "corp")
    corp_pem = corp.ca_path.read_bytes().strip()
    before = {"SSL_CERT_FILE": str(corp.ca_path), "NODE_EXTRA_CA_CERTS": str(corp.ca_path),
              "NODE_OPTIONS": "--max-old-space-size=200", "https_proxy": "http://stale.example:3128",
              "NO_PROXY": "corp.internal"}
    # Twice in one shell (the second run must read the saved values, not its own), then undo.
    res = _bash(home, f'eval "$(HM env)"; eval "$(HM env)"; env > {tmp_path}/on; '
                      'eval "$(HM env --unset)"; env', before)
    assert res.returncode == 0, res.stderr
    on = _vars((tmp_path / "on").read_text())
    bundle = Path(on["SSL_CERT_FILE"]).read_bytes()
    assert corp_pem in bundle
    assert (home / "mitmproxy" / "mitmproxy-ca-cert.pem").read_bytes().strip() in bundle
    assert Path(certifi.where()).read_bytes().strip() in bundle
    assert on["REQUESTS_CA_BUNDLE"] == on["CURL_CA_BUNDLE"] == on["SSL_CERT_FILE"]
    node_ca = Path(on["NODE_EXTRA_CA_CERTS"]).read_bytes()
    assert corp_pem in node_ca and node_ca.count(b"BEGIN CERTIFICATE") == 2
    assert on["NODE_OPTIONS"] == f"--max-old-space-size=200 --require {home / 'node-proxy.cjs'}"
    assert on["NO_PROXY"] == "localhost,127.0.0.1,::1,corp.internal"
    assert on["https_proxy"].startswith("http://127.0.0.1:")
    assert "# halton-meter: https_proxy was http://stale.example:3128" in res.stderr
    off = _vars(res.stdout)
    for name, value in before.items():
        assert off[name] == value, name
    for name in ("HTTPS_PROXY", "http_proxy", "REQUESTS_CA_BUNDLE", "NODE_USE_ENV_PROXY", "no_proxy",
                 "HALTON_METER_ENV", "HALTON_METER_SAVED_SSL_CERT_FILE"):
        assert name not in off, name


def test_env_meters_a_loopback_capture_host(tmp_path: Path) -> None:
    home, _ = _home(tmp_path, '[[capture.hosts]]\nhost = "127.0.0.1:11434"\ndialect = "openai"\n')
    res = _bash(home, 'eval "$(HM env)" && env')
    assert res.returncode == 0, res.stderr
    assert _vars(res.stdout)["NO_PROXY"] == "localhost,::1"
    assert "# halton-meter: NO_PROXY leaves out 127.0.0.1" in res.stderr


def test_env_notes_are_shell_comments_on_stderr(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    res = _bash(home, 'HM env', {"SSL_CERT_FILE": str(tmp_path / "missing.pem")})
    assert res.returncode == 0
    lines = res.stderr.strip().splitlines()
    assert lines and all(line.startswith("# halton-meter: ") for line in lines)
    assert any("the daemon is not running" in line and "halton-meter start" in line for line in lines)
    assert any("missing.pem" in line and "left out of the bundle" in line for line in lines)
    # Evaluating stdout and stderr together is harmless.
    both = _bash(home, 'eval "$(HM env 2>&1)" && echo "$HTTPS_PROXY"')
    assert both.returncode == 0 and both.stdout.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(("shell", "line"), [
    ("fish", "set -e HTTPS_PROXY;"), ("powershell", "Remove-Item Env:HTTPS_PROXY -ErrorAction SilentlyContinue"),
    ("zsh", "unset https_proxy"),
])
def test_env_unset_syntax(tmp_path: Path, shell: str, line: str) -> None:
    res = _bash(tmp_path, f"HM env --unset --shell {shell}")
    assert res.returncode == 0, res.stderr
    assert line in res.stdout.splitlines()


@pytest.mark.slow
def test_upstream_trusted_ca_adds_to_the_public_cas(tmp_path: Path) -> None:
    """mitmproxy 11 replaces certifi with ssl_verify_upstream_trusted_ca's file; the daemon
    hands it certifi + the user's PEM instead, and a non-PEM file is a clear start error."""
    from tests.support.daemon import running_daemon, start_daemon

    gateway = make_ca(tmp_path / "gateway")
    with running_daemon(tmp_path / "home", upstream_ca=gateway.ca_path) as d:
        trusted = (d.home / "upstream-ca.pem").read_bytes()
        assert Path(certifi.where()).read_bytes().strip() in trusted
        assert gateway.ca_path.read_bytes().strip() in trusted
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(RuntimeError) as err:
        start_daemon(tmp_path / "home2", upstream_ca=not_pem)
    assert "ssl_verify_upstream_trusted_ca" in str(err.value) and "no PEM certificate" in str(err.value)
