"""`halton-meter completion SHELL`: click's own completion script for bash, zsh or fish."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script (click's own) for bash, zsh or fish.

    \b
    Example:
      eval "$(halton-meter completion bash)"                            # this shell
      halton-meter completion fish > ~/.config/fish/completions/halton-meter.fish
    """
    from click.shell_completion import get_completion_class

    from .main import cli

    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one click knows
    click.echo(cls(cli, {}, "halton-meter", "_HALTON_METER_COMPLETE").source())
