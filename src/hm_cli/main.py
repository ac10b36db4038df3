"""The `halton-meter` command.

Subcommands are imported only when run (status must stay fast); the
``cloud`` group lives in hm_cli.cloud and is added when it exists.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> (module, attribute). Lazy: `halton-meter status` imports only its own module.
_COMMANDS: dict[str, tuple[str, str]] = {
    "start": ("hm_cli.lifecycle", "start"),
    "stop": ("hm_cli.lifecycle", "stop"),
    "run": ("hm_cli.lifecycle", "run"),
    "restart": ("hm_cli.lifecycle", "restart"),
    "status": ("hm_cli.status", "status"),
    "env": ("hm_cli.envcmd", "env"),
    "doctor": ("hm_cli.doctor", "doctor"),
    "report": ("hm_cli.report", "report"),
    "dashboard": ("hm_cli.report", "dashboard"),
    "budget": ("hm_cli.budget", "budget"),
    "prices": ("hm_cli.prices", "prices"),
    "service": ("hm_cli.service", "service"),
    "completion": ("hm_cli.completion", "completion"),
    "cloud": ("hm_cli.cloud", "cloud"),
}

_SUMMARIES = {
    "start": "Start the daemon in the background.",
    "stop": "Stop the daemon (pending rows are written first).",
    "run": "Run the daemon in the foreground (service managers).",
    "restart": "Restart the daemon.",
    "status": "Daemon health, proxy address, rows today, cloud state.",
    "env": "Print the environment that points programs at the proxy.",
    "doctor": "Check everything that can go wrong, and say how to fix it.",
    "report": "Spend and tokens from the local database.",
    "dashboard": "Open the local spend as a web page (charts, no server).",
    "budget": "Budgets: spend per period, alerts, blocks (list, status, snooze).",
    "prices": "Price data in use; fetch genai-prices' newest (prices update).",
    "service": "Run the daemon at login (systemd user unit / launchd agent).",
    "completion": "Print the shell completion script (bash, zsh, fish).",
    "cloud": "Pair with a Halton Meter Cloud workspace and sync.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in _COMMANDS if name != "cloud" or _cloud_available()]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None  # e.g. hm_cli.cloud not installed in this build
            raise
        command: Any = getattr(module, attr)
        return command  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SUMMARIES[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _cloud_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("hm_cli.cloud") is not None
    except (ImportError, ValueError):
        return False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="halton-meter", prog_name="halton-meter")
def cli() -> None:
    """Meter what this machine spends on LLM APIs, through a local proxy.

    \b
    Example:
      halton-meter start            # proxy on 127.0.0.1:8090
      eval "$(halton-meter env)"    # point this shell's programs at it
      halton-meter report --since 7d
    """


def main() -> None:
    cli(prog_name="halton-meter")


if __name__ == "__main__":
    main()
