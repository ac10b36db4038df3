"""`halton-meter service install|uninstall`: run the daemon at login.

Linux: a systemd user unit, ``$XDG_CONFIG_HOME/systemd/user/halton-meter.service``.
macOS: a launchd agent, ``~/Library/LaunchAgents/com.haltonmeter.daemon.plist``.
Both run ``halton-meter run`` (the foreground form: the service manager keeps it
alive and stops it with SIGTERM, which writes pending rows first) with this
Python and this home. ``install`` then starts it with the service manager when
one answers; otherwise it prints the commands to run.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import click

from ._ui import console, fail, safe

UNIT_NAME = "halton-meter.service"
AGENT_LABEL = "com.haltonmeter.daemon"
PLATFORMS = ("systemd", "launchd")


def default_platform() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def service_path(platform: str) -> Path:
    if platform == "launchd":
        return Path.home() / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


def _command() -> list[str]:
    """How the service starts the daemon: this interpreter, so the same install is used."""
    return [sys.executable, "-m", "hm_cli.main", "run"]


def _systemd_quote(value: str) -> str:
    """One word for ExecStart/Environment: quoted, with systemd's specifiers (%) escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def systemd_unit(home: Path) -> str:
    exec_start = " ".join(_systemd_quote(word) for word in _command())
    return (
        "# Written by `halton-meter service install`; remove it with `halton-meter service uninstall`.\n"
        "[Unit]\n"
        "Description=Halton Meter: meters LLM API spend through a local proxy\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        f"Environment={_systemd_quote(f'HALTON_METER_HOME={home}')}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "# SIGTERM stops it gracefully: rows waiting in memory are written first.\n"
        "TimeoutStopSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist(home: Path) -> bytes:
    return plistlib.dumps({
        "Label": AGENT_LABEL,
        "ProgramArguments": _command(),
        "EnvironmentVariables": {"HALTON_METER_HOME": str(home)},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Background",
        "StandardErrorPath": str(home / "service.log"),
    })


def _run(args: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def _manager_answers(platform: str) -> bool:
    """Is there a service manager for this user session to talk to?"""
    if platform == "launchd":
        return sys.platform == "darwin" and shutil.which("launchctl") is not None
    if shutil.which("systemctl") is None:
        return False
    ok, _ = _run(["systemctl", "--user", "show-environment"])
    return ok


def _start_commands(platform: str, path: Path) -> list[list[str]]:
    if platform == "launchd":
        return [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)]]
    return [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]]


def _stop_commands(platform: str, path: Path) -> list[list[str]]:
    if platform == "launchd":
        return [["launchctl", "bootout", f"gui/{os.getuid()}", str(path)]]
    return [["systemctl", "--user", "disable", "--now", UNIT_NAME]]


def _shell(commands: list[list[str]]) -> str:
    import shlex

    return " && ".join(shlex.join(c) for c in commands)


@click.group("service")
def service() -> None:
    """Run the daemon at login (systemd user unit on Linux, launchd agent on macOS).

    \b
    Example:
      halton-meter service install
      halton-meter service uninstall
    """


_PLATFORM = click.option("--platform", type=click.Choice(PLATFORMS), default=None,
                         help="Service manager (default: launchd on macOS, else systemd).")


@service.command("install")
@_PLATFORM
@click.option("--no-start", is_flag=True, help="Write the file only; print how to start it.")
@click.option("--print", "print_only", is_flag=True, help="Print the file instead of writing it.")
def install(platform: str | None, no_start: bool, print_only: bool) -> None:
    """Write the service file that runs `halton-meter run`, and start it.

    \b
    Example:
      halton-meter service install
    """
    from hm_agent.home import home_dir, write_atomic

    platform = platform or default_platform()
    home = home_dir().expanduser().resolve()
    content = launchd_plist(home) if platform == "launchd" else systemd_unit(home).encode()
    if print_only:
        click.echo(content.decode(), nl=False)
        return
    path = service_path(platform)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, content, 0o644)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}. Check that folder's permissions.")
    out = console()
    out.print(f"[green]●[/green] wrote {safe(path)}")
    start = _start_commands(platform, path)
    if no_start or not _manager_answers(platform):
        why = "" if no_start else " (no service manager answers in this session)"
        out.print(f"  Start it{why}: {safe(_shell(start))}")
        return
    from .lifecycle import stop_daemon

    if stop_daemon(home) is not None:  # the service runs its own daemon on the same port
        out.print("[green]●[/green] stopped the daemon started by `halton-meter start`; the service runs it now")
    for command in start:
        ok, detail = _run(command)
        if not ok:
            fail(f"`{_shell([command])}` failed: {detail or 'no detail'}. The file is written; fix that and run it again.")
    out.print("[green]●[/green] the service is running: check with `halton-meter status`")


@service.command("uninstall")
@_PLATFORM
def uninstall(platform: str | None) -> None:
    """Stop the service and remove its file (the home and its data stay).

    \b
    Example:
      halton-meter service uninstall
    """
    platform = platform or default_platform()
    path = service_path(platform)
    out = console()
    if not path.exists():
        out.print(f"[dim]●[/dim] no service file at {safe(path)}; nothing to remove")
        return
    if _manager_answers(platform):
        for command in _stop_commands(platform, path):
            _run(command)  # not loaded / already stopped is fine: the file goes either way
    try:
        path.unlink()
    except OSError as exc:
        fail(f"cannot remove {path}: {exc.strerror or exc}")
    if platform == "systemd" and _manager_answers(platform):
        _run(["systemctl", "--user", "daemon-reload"])
    out.print(f"[green]●[/green] removed {safe(path)}; the daemon no longer starts at login")
