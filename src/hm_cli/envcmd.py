"""env: the variables a program needs to use the proxy and trust its CA."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ._ui import fail

SHELLS = ("bash", "zsh", "fish", "powershell")


def proxy_env(home: Path) -> dict[str, str]:
    """The variables, in the order they are printed. Writes ca-bundle.pem if needed."""
    from hm_agent.cabundle import write_ca_bundle
    from hm_agent.config import ConfigError, load_config
    from hm_agent.home import paths

    hp = paths(home)
    try:
        cfg = load_config(hp)
    except ConfigError as exc:
        fail(str(exc))
    if not hp.ca_cert.exists():
        fail(f"the proxy's CA does not exist yet ({hp.ca_cert}). Start the daemon once: halton-meter start")
    try:
        bundle = write_ca_bundle(hp)
    except OSError as exc:
        fail(f"cannot write {hp.ca_bundle}: {exc.strerror}. Check the permissions of {hp.home}.")
    proxy = f"http://{cfg.listen_host}:{cfg.listen_port}"
    return {
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "SSL_CERT_FILE": str(bundle),
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CURL_CA_BUNDLE": str(bundle),
        "NODE_EXTRA_CA_CERTS": str(hp.ca_cert),
    }


def _quote_posix(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def format_env(variables: dict[str, str], shell: str) -> str:
    lines = []
    for key, value in variables.items():
        if shell == "fish":
            lines.append(f"set -gx {key} {_quote_posix(value)};")
        elif shell == "powershell":
            lines.append(f"$env:{key} = '{value.replace(chr(39), chr(39) * 2)}'")
        else:
            lines.append(f"export {key}={_quote_posix(value)}")
    return "\n".join(lines)


def _default_shell() -> str:
    name = Path(os.environ.get("SHELL", "bash")).name
    return name if name in SHELLS else "bash"


@click.command()
@click.option("--shell", type=click.Choice(SHELLS), default=None, help="Output syntax (default: from $SHELL).")
def env(shell: str | None) -> None:
    """Print the environment that sends a program's HTTPS through the proxy.

    HTTPS_PROXY/HTTP_PROXY point at the daemon; NO_PROXY keeps loopback direct;
    SSL_CERT_FILE, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE name a bundle of the
    public CAs plus the daemon's (so other HTTPS keeps working);
    NODE_EXTRA_CA_CERTS adds the daemon's CA for Node.

    \b
    Examples:
      eval "$(halton-meter env)"
      halton-meter env --shell fish | source
      halton-meter env --shell powershell | Invoke-Expression
    """
    from hm_agent.home import home_dir

    click.echo(format_env(proxy_env(home_dir()), shell or _default_shell()))
