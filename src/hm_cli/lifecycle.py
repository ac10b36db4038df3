"""start / stop / run / restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ._ui import console, fail, safe

BACKENDS = click.Choice(["asyncio", "trio"])
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


def _home() -> Path:
    from hm_agent.home import home_dir

    return home_dir()


def check_config(home: Path, *, running: bool = False) -> list[str]:
    """Parse config.toml as the daemon will; return its warnings, or fail with every error.

    ``running``: a daemon is up and will be left running (restart checks first)."""
    from hm_agent.config import ConfigError, load_config
    from hm_agent.home import paths

    try:
        return load_config(paths(home)).warnings
    except ConfigError as exc:
        fail(config_failure(exc, running))


def config_failure(exc: Exception, running: bool = False) -> str:
    errors = getattr(exc, "errors", [str(exc)])
    keep = " The running daemon was left as it is." if running else ""
    return f"{exc}{keep}" if len(errors) == 1 else f"{exc}\nFix these and run it again.{keep}"


def print_warnings(out: Any, warnings: list[str]) -> None:

    for warning in warnings:
        out.print(f"  [yellow]![/yellow] {safe(warning)}")


def start_daemon(home: Path, backend: str) -> str:
    """Spawn the daemon in the background; return "host:port" once the proxy is bound."""
    from hm_agent.config import ConfigError
    from hm_agent.daemon import prepare
    from hm_agent.home import HomeError

    try:
        prepare(home)  # the common mistakes fail here, with the message, before forking
    except HomeError as exc:
        fail(str(exc))
    except ConfigError as exc:
        fail(config_failure(exc))
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hm_agent", "run", "--backend", backend, "--ready-fd", str(write_fd), "--background"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,  # survives the terminal closing
            env={**os.environ, "HALTON_METER_HOME": str(home)},
        )
    finally:
        os.close(write_fd)
    line = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    import selectors

    with os.fdopen(read_fd, "rb", buffering=0) as ready, selectors.DefaultSelector() as sel:
        sel.register(ready, selectors.EVENT_READ)
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if proc.poll() is not None:
                    # It exited: whatever it wrote is in the pipe, and with no writer
                    # left this read cannot block.
                    line += ready.read(4096) or b""
                    break
                continue
            chunk = ready.read(4096)
            if not chunk:
                break
            line += chunk
    text = line.decode(errors="replace").strip()
    if text.startswith("ok "):
        return text[3:]
    if text.startswith("error: "):
        try:  # it is exiting: let it finish, so nothing of it is left behind
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        fail(text[len("error: "):])
    if proc.poll() is None:
        proc.kill()
        fail(f"the daemon did not start within {START_TIMEOUT_S:.0f}s; see {home / 'daemon.log'}")
    fail(f"the daemon exited during startup (code {proc.returncode}); see {home / 'daemon.log'}")


@dataclass(frozen=True)
class Stopped:
    """What `stop` learnt: the pid, and the rows the database did not take (0 = all on disk)."""

    pid: int
    unwritten: int = 0
    lost: int = 0
    spilled_to: str | None = None
    error: str | None = None

    def problem(self, home: Path) -> str | None:
        """One line when rows are not in db.sqlite, saying where they are; None when all are."""
        if not self.unwritten:
            return None
        why = f" ({self.error})" if self.error else ""
        text = f"{self.unwritten} captured rows could not be written to {home / 'db.sqlite'}{why}"
        kept = self.unwritten - self.lost
        if kept:
            text += (f"; {kept} are kept in {self.spilled_to} and are written at the next "
                     f"`halton-meter start` (free some disk space first)")
        if self.lost:
            text += f"; {self.lost} are lost (no file could hold them either: see {home / 'daemon.log'})"
        return text


def stop_daemon(home: Path, timeout: float = STOP_TIMEOUT_S) -> Stopped | None:
    """Ask the daemon to stop and wait until it exited (rows drained). None if it was not running."""
    from hm_agent.control import ControlError, DaemonNotRunning, control_call

    try:
        # The daemon answers once the proxy is closed and every pending row is written
        # (or, past its drain timeout, kept in the spill file).
        reply = control_call(home, "stop", timeout=timeout)
    except DaemonNotRunning:
        return None
    except ControlError as exc:
        fail(f"{exc}. If it is stuck, kill it: kill $(cat {home / 'daemon.pid'})")
    pid = int(reply.get("pid", 0))
    raw_rows = reply.get("rows")
    rows: dict[str, Any] = raw_rows if isinstance(raw_rows, dict) else {}
    stopped = Stopped(
        pid=pid,
        unwritten=_count(rows.get("unwritten")),
        lost=_count(rows.get("lost")),
        spilled_to=str(rows["spilled_to"]) if rows.get("spilled_to") else None,
        error=str(rows["error"]) if rows.get("error") else None,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return stopped
        time.sleep(0.05)
    fail(f"the daemon (pid {pid}) is still writing rows after {timeout:.0f}s; see {home / 'daemon.log'}")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        wpid, _ = os.waitpid(pid, os.WNOHANG)
        return wpid == 0
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _running(home: Path) -> bool:
    from hm_agent.control import ControlError, DaemonNotRunning, UntrustedSocket, control_call

    try:
        control_call(home, "ping", timeout=3.0)
    except DaemonNotRunning:
        return False
    except UntrustedSocket as exc:
        fail(str(exc))
    except ControlError:
        return True
    return True


@click.command()
@click.option("--backend", type=BACKENDS, default="asyncio", show_default=True, help="Event loop of the supervisor.")
def start(backend: str) -> None:
    """Start the daemon in the background; returns once the proxy is listening.

    \b
    Example:
      halton-meter start && eval "$(halton-meter env)"
    """
    home = _home()
    out = console()
    if _running(home):
        out.print("[green]●[/green] the daemon is already running (see `halton-meter status`)")
        print_warnings(out, check_config(home, running=True))
        return
    with out.status("Starting the daemon…", spinner="dots"):
        bound = start_daemon(home, backend)
    out.print(f"[green]●[/green] daemon started: mitm bound on {safe(bound)}")
    print_warnings(out, check_config(home))
    out.print('  Point programs at it with: eval "$(halton-meter env)"')


@click.command()
def stop() -> None:
    """Stop the daemon gracefully (pending rows are written to disk first).

    \b
    Example:
      halton-meter stop
    """
    home = _home()
    out = console()
    with out.status("Stopping the daemon…", spinner="dots"):
        stopped = stop_daemon(home)
    if stopped is None:
        out.print("[dim]●[/dim] the daemon is not running")
        return
    problem = stopped.problem(home)
    if problem:
        fail(f"daemon stopped (pid {stopped.pid}), but {problem}")
    out.print(f"[green]●[/green] daemon stopped (pid {stopped.pid}); every captured row is on disk")


@click.command()
@click.option("--backend", type=BACKENDS, default="asyncio", show_default=True, help="Event loop of the supervisor.")
def run(backend: str) -> None:
    """Run the daemon in the foreground (for systemd, launchd, containers).

    SIGTERM or SIGINT stop it gracefully. Logs go to ~/.halton-meter/daemon.log;
    warnings also to stderr.

    \b
    Example (systemd unit):
      ExecStart=/usr/bin/env halton-meter run --backend asyncio
    """
    from hm_agent.daemon import run_daemon

    raise SystemExit(run_daemon(_home(), backend=backend, foreground=True))


@click.command()
@click.option("--backend", type=BACKENDS, default="asyncio", show_default=True, help="Event loop of the supervisor.")
def restart(backend: str) -> None:
    """Stop the daemon (if running) and start it again, e.g. after editing config.toml.

    \b
    Example:
      halton-meter restart --backend trio
    """
    home = _home()
    out = console()
    # Check the new config first: a broken file must not stop a working daemon.
    warnings = check_config(home, running=_running(home))
    with out.status("Restarting the daemon…", spinner="dots"):
        stopped = stop_daemon(home)
        problem = stopped.problem(home) if stopped is not None else None
        if problem:
            click.echo(f"halton-meter: warning: {problem}", err=True)
        bound = start_daemon(home, backend)
    out.print(f"[green]●[/green] daemon restarted: mitm bound on {safe(bound)}")
    print_warnings(out, warnings)
