"""Start a real halton-meter daemon in a temp home on free ports, for tests.

    with running_daemon(home, backend="trio", upstream_ca=ca.ca_path,
                        extra_config='[[capture.hosts]]\\nhost = "localhost:8443"\\ndialect = "openai"\\n') as d:
        d.cli("status", "--json")            # CompletedProcess of `halton-meter status --json`
        httpx.post(url, proxy=d.proxy_url, verify=str(d.ca_cert_path))
        subprocess.run(["curl", ...], env=d.env_for_clients())

The daemon is a real subprocess (`halton-meter start`); on exit it is stopped
gracefully and killed (-9) if it does not stop, even when the test failed.
``extra_config`` is TOML appended to a generated config.toml; if it contains
its own ``[cloud]`` table, the generated one is left out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HALTON_METER = [sys.executable, "-m", "hm_cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_env(home: Path, tick_seconds: float = 0.2, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for CLI/daemon subprocesses: this home, no proxy variables."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")}
    env["HALTON_METER_HOME"] = str(home)
    env["HALTON_METER_TICK_SECONDS"] = str(tick_seconds)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def config_text(port: int, upstream_ca: Path | None = None, extra_config: str = "") -> str:
    text = (
        "[proxy]\n"
        'listen_host = "127.0.0.1"\n'
        f"listen_port = {port}\n"
        f'ssl_verify_upstream_trusted_ca = "{upstream_ca or ""}"\n'
    )
    if "[cloud]" not in extra_config:
        text += '\n[cloud]\nenabled = false\nbase_url = "https://api.haltonmeter.com"\n'
    return text + "\n" + extra_config + "\n"


def run_cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HALTON_METER, *args], env=env or daemon_env(home), capture_output=True, text=True,
        timeout=timeout, input=input,
    )


@dataclass
class Daemon:
    home: Path
    proxy_port: int
    backend: str
    env: dict[str, str] = field(repr=False)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def ca_cert_path(self) -> Path:
        """The daemon's CA certificate: what clients must trust."""
        return self.home / "mitmproxy" / "mitmproxy-ca-cert.pem"

    @property
    def db_path(self) -> Path:
        return self.home / "db.sqlite"

    @property
    def pid(self) -> int | None:
        try:
            return int(json.loads((self.home / "daemon.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def cli(self, *args: str, timeout: float = 90.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `halton-meter ARGS` against this daemon's home."""
        return run_cli(self.home, *args, env=self.env, timeout=timeout, input=input)

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def env_for_clients(self) -> dict[str, str]:
        """Environment for curl/httpx/SDK subprocesses: proxy + trust the daemon's CA only."""
        env = {k: v for k, v in os.environ.items() if k.upper() not in ("NO_PROXY",)}
        ca = str(self.ca_cert_path)
        env.update({
            "HTTPS_PROXY": self.proxy_url, "HTTP_PROXY": self.proxy_url, "https_proxy": self.proxy_url,
            "http_proxy": self.proxy_url, "SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca,
            "CURL_CA_BUNDLE": ca, "NODE_EXTRA_CA_CERTS": ca, "HALTON_METER_HOME": str(self.home),
        })
        env.pop("no_proxy", None)
        return env

    def curl(self, url: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """curl through the proxy, trusting the daemon's CA."""
        return subprocess.run(
            ["curl", "-sS", "--max-time", str(int(timeout)), "--proxy", self.proxy_url,
             "--cacert", str(self.ca_cert_path), *args, url],
            capture_output=True, text=True, timeout=timeout + 5, env=self.env_for_clients(),
        )

    def wait_rows(self, n: int, timeout: float = 10.0) -> int:
        """Wait until the database holds at least n rows; return the count."""
        import sqlite3

        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            if self.db_path.exists():
                conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
                try:
                    count = int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
                except sqlite3.Error:
                    count = 0
                finally:
                    conn.close()
                if count >= n:
                    return count
            time.sleep(0.05)
        return count

    def rows(self) -> list[dict[str, Any]]:
        """Every row of db.sqlite as a dict ([] before the first one)."""
        import sqlite3

        if not self.db_path.exists():
            return []
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5) as conn:
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute("SELECT * FROM requests")]
            except sqlite3.OperationalError:
                return []

    def row_ids(self) -> set[str]:
        return {r["id"] for r in self.rows()}

    def next_row(self, before: set[str], timeout: float = 10) -> dict[str, Any]:
        """The one row written since ``before`` (ids); fails if none comes or more than one does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [r for r in self.rows() if r["id"] not in before]
            if new:
                assert len(new) == 1, new
                return new[0]
            time.sleep(0.02)
        raise AssertionError("the daemon wrote no row for the call")

    def stop(self) -> subprocess.CompletedProcess[str]:
        return self.cli("stop")

    def kill9(self) -> None:
        pid = self.pid
        if pid:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1][:1] == "Z":
                    return True
        except (OSError, IndexError):
            return True
        time.sleep(0.05)
    return False


def start_daemon(home: Path, backend: str = "asyncio", *, extra_config: str = "", upstream_ca: Path | None = None,
                 port: int | None = None, tick_seconds: float = 0.2, env: dict[str, str] | None = None,
                 write_config: bool = True) -> Daemon:
    """Write config.toml and run `halton-meter start`; raise with the CLI's output if it fails."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = port or free_port()
    if write_config:
        (home / "config.toml").write_text(config_text(port, upstream_ca, extra_config))
    d = Daemon(home=home, proxy_port=port, backend=backend, env=daemon_env(home, tick_seconds, env))
    result = d.cli("start", "--backend", backend)
    if result.returncode != 0:
        raise RuntimeError(f"halton-meter start failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return d


def stop_or_kill(d: Daemon) -> None:
    pid = d.pid
    try:
        d.cli("stop", timeout=60)
    except subprocess.TimeoutExpired:
        pass
    if pid and not _wait_gone(pid, 5):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(pid, 5)


@contextmanager
def running_daemon(home: Path, backend: str = "asyncio", *, extra_config: str = "",
                   upstream_ca: Path | None = None, port: int | None = None, tick_seconds: float = 0.2,
                   env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """A started daemon for the block; always stopped (or killed) afterwards."""
    d = start_daemon(home, backend, extra_config=extra_config, upstream_ca=upstream_ca, port=port,
                     tick_seconds=tick_seconds, env=env)
    try:
        yield d
    finally:
        stop_or_kill(d)


def capture_host_config(hosts: Sequence[str], dialect: str = "openai") -> str:
    """``[[capture.hosts]]`` entries for local fake providers (e.g. "localhost:8443")."""
    return "".join(f'[[capture.hosts]]\nhost = "{h}"\ndialect = "{dialect}"\n' for h in hosts)


@contextmanager
def daemon_metering(tmp: Path, make_upstream: Any, dialect: str = "openai") -> Iterator[tuple[Daemon, Any]]:
    """A fake upstream (``make_upstream(ca)``, a context manager with ``.port``) on a fresh test CA,
    and a daemon that meters it as a ``[[capture.hosts]]`` entry and trusts that CA."""
    from .tls import make_ca

    ca = make_ca(tmp / "ca")
    with make_upstream(ca) as upstream, running_daemon(
        tmp / "home", upstream_ca=ca.ca_path, extra_config=capture_host_config([f"localhost:{upstream.port}"], dialect),
    ) as daemon:
        yield daemon, upstream
