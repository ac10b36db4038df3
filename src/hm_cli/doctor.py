"""doctor: check each thing that can be wrong, and say how to fix it."""

from __future__ import annotations

import http.client
import os
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

from ._ui import console, safe


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped / not applicable
    detail: str
    fix: str = ""


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        body = b"halton-meter doctor ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _local_endpoint() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_checks(home: Path, probe: bool = False) -> list[Check]:
    from hm_agent.config import ConfigError, load_config
    from hm_agent.control import ControlError, DaemonNotRunning, control_call
    from hm_agent.home import HomeError, paths, read_machine_id

    hp = paths(home)
    checks: list[Check] = [_python()]
    if not hp.home.is_dir():
        checks.append(Check("home", False, f"{hp.home} does not exist", "run `halton-meter start` to create it"))
        return checks
    mode = _mode(hp.home)
    writable = os.access(hp.home, os.W_OK | os.X_OK)
    checks.append(Check(
        "home", writable and not mode & 0o077, f"{hp.home} (mode {mode:o})",
        "" if writable and not mode & 0o077 else f"chmod 700 {hp.home}",
    ))
    cfg = None
    try:
        cfg = load_config(hp)
        # Each warning already starts with the file and line.
        detail = "; ".join(cfg.warnings) if cfg.warnings else str(hp.config)
        checks.append(Check("config", not cfg.warnings, detail,
                            "remove or fix the keys named above" if cfg.warnings else ""))
    except ConfigError as exc:
        checks.append(Check("config", False, str(exc), f"edit {hp.config}"))
    try:
        mid = read_machine_id(hp)
        checks.append(Check("machine id", mid is not None, mid or "machine.json missing",
                            "" if mid else "run `halton-meter start` to create it"))
    except HomeError as exc:
        checks.append(Check("machine id", False, str(exc)))

    running = False
    status: dict[str, object] = {}
    try:
        status = control_call(hp, "status", timeout=5.0)
        running = True
        daemon = status.get("daemon") or {}
        healthy = bool(daemon.get("healthy")) if isinstance(daemon, dict) else False
        problems = "; ".join(daemon.get("problems") or []) if isinstance(daemon, dict) else ""
        pid = daemon.get("pid") if isinstance(daemon, dict) else None
        checks.append(Check("daemon", healthy, f"running (pid {pid})" + (f": {problems}" if problems else ""),
                            "" if healthy else f"see {hp.log}; try `halton-meter restart`"))
    except DaemonNotRunning:
        checks.append(Check("daemon", False, "not running", "halton-meter start"))
    except ControlError as exc:
        checks.append(Check("daemon", False, f"does not answer: {exc}", f"see {hp.log}; halton-meter restart"))

    host = cfg.listen_host if cfg else "127.0.0.1"
    port = cfg.listen_port if cfg else 8090
    try:
        with socket.create_connection((host, port), timeout=2):
            listening = True
    except OSError:
        listening = False
    if running:
        checks.append(Check("port", listening, f"{host}:{port} " + ("accepts connections" if listening else "refuses connections"),
                            "" if listening else "halton-meter restart"))
    else:
        checks.append(Check("port", not listening, f"{host}:{port} " + ("is taken by another program" if listening else "is free"),
                            f"free the port (lsof -i :{port}) or set [proxy] listen_port in {hp.config}" if listening else ""))

    if hp.ca_cert.exists() and hp.ca_key.exists():
        key_mode = _mode(hp.ca_key)
        ok = not key_mode & 0o077
        checks.append(Check("CA", ok, f"{hp.ca_cert} (key mode {key_mode:o})", "" if ok else f"chmod 600 {hp.ca_key}"))
        ours = hp.ca_cert.read_bytes().strip()
        in_bundle = hp.ca_bundle.exists() and ours in hp.ca_bundle.read_bytes()
        checks.append(Check("CA bundle", in_bundle, str(hp.ca_bundle),
                            "" if in_bundle else "run `halton-meter env` (it rewrites the bundle)"))
    else:
        checks.append(Check("CA", False, f"{hp.ca_cert} missing", "start the daemon once: halton-meter start"))

    if running and listening:
        checks.append(_proxy_roundtrip(host, port))
    else:
        checks.append(Check("proxy request", None, "skipped (the daemon is not running)"))
    env_proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    expected = f"http://{host}:{port}"
    checks.append(Check(
        "this shell", env_proxy == expected if env_proxy else None,
        f"HTTPS_PROXY={env_proxy}" if env_proxy else "HTTPS_PROXY is not set here",
        "" if env_proxy == expected else 'eval "$(halton-meter env)"',
    ))
    from .probe import client_checks, probe_checks

    checks.extend(client_checks(home, cfg.capture_hosts if cfg else []))
    if probe:
        if running and listening:
            checks.extend(probe_checks())
        else:
            checks.append(Check("probe", None, "skipped (the daemon is not running)"))
    return checks


def _python() -> Check:
    """The Python this install runs on (the package needs 3.11: mitmproxy 11.0.2)."""
    import platform
    import sys

    version = platform.python_version()
    ok = sys.version_info[:2] == (3, 11)
    return Check("python", ok, f"{version} ({sys.executable})",
                 "" if ok else "reinstall on Python 3.11: uv tool install . (README)")


def _proxy_roundtrip(host: str, port: int) -> Check:
    with _local_endpoint() as target:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", f"http://127.0.0.1:{target}/halton-meter-doctor")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
        except OSError as exc:
            return Check("proxy request", False, f"failed: {exc}", "halton-meter restart; see the log")
    ok = resp.status == 200 and body == b"halton-meter doctor ok"
    return Check("proxy request", ok, f"GET through the proxy → {resp.status}",
                 "" if ok else "the proxy answered wrongly: halton-meter restart")


@click.command()
@click.option("--probe", is_flag=True,
              help="Also have Python, curl and Node (those found) make a request with this shell's "
                   "environment, and say which would bypass the meter.")
def doctor(probe: bool) -> None:
    """Check the daemon, port, CA files and permissions, and a request through the proxy.

    Each failed check says how to fix it. Exit code 0 when the install checks pass; the
    checks of this shell's environment (this shell, node, loopback hosts) only advise.

    \b
    Examples:
      halton-meter doctor
      halton-meter doctor --probe
    """

    from hm_agent.home import home_dir

    out = console()
    if probe:
        click.echo("Probing the clients on this machine…", err=True)
    checks = run_checks(home_dir(), probe)
    for c in checks:
        mark = "[green]✓[/green]" if c.ok else ("[dim]-[/dim]" if c.ok is None else "[red]✗[/red]")
        # escape: `[proxy] listen_port` is text, not rich markup
        out.print(f"{mark} {c.name:<14} {safe(c.detail)}")
        if c.ok is False and c.fix:
            out.print(f"  {'':<14} [bold]fix:[/bold] {safe(c.fix)}")
    # What this shell does is advice; a probe the user asked for counts.
    failed = [c for c in checks if c.ok is False and c.name not in ("this shell", "node", "loopback hosts")]
    raise SystemExit(1 if failed else 0)
