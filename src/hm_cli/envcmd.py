"""env: the variables a program needs to use the proxy and trust its CA.

What the shell had before is kept: a CA file it already named (a corporate
CA) goes into the bundle next to ours, NO_PROXY entries and NODE_OPTIONS are
extended rather than replaced, and each replaced value is saved in
HALTON_METER_SAVED_<NAME> so ``env --unset`` puts it back. Running ``env``
twice in one shell (HALTON_METER_ENV=1) reads the saved values, never its own.
Notes go to stderr as shell comments, so ``eval "$(halton-meter env 2>&1)"``
is harmless too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from ._ui import fail

SHELLS = ("bash", "zsh", "fish", "powershell")
MARKER = "HALTON_METER_ENV"
SAVED = "HALTON_METER_SAVED_"
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy")
BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE")
NODE_CA_VAR = "NODE_EXTRA_CA_CERTS"
MANAGED = (*PROXY_VARS, *NO_PROXY_VARS, *BUNDLE_VARS, NODE_CA_VAR, "NODE_USE_ENV_PROXY", "NODE_OPTIONS")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    return host == "localhost" or host.endswith(".localhost") or host.startswith("127.") or host == "::1"


def split_host_port(entry: str) -> tuple[str, str]:
    """("host", "port" or "") of a capture host such as 127.0.0.1:11434 or [::1]:8080."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.lstrip(":")
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def metered_loopback(capture_hosts: list[tuple[str, str]]) -> list[str]:
    """Loopback names that configured capture hosts use (they must not bypass the proxy)."""
    names = []
    for entry in capture_hosts:
        host, _ = split_host_port(entry[0])
        if _is_loopback(host) and host not in names:
            names.append(host)
    return names


def no_proxy_value(previous: str | None, metered: list[str]) -> str:
    """Loopback stays direct, except the names a capture host is on; the shell's own entries are kept."""
    entries = [e for e in LOOPBACK if e not in metered]
    for raw in (previous or "").replace(" ", ",").split(","):
        entry = raw.strip()
        name, _ = split_host_port(entry)
        if entry and entry not in entries and name not in metered:
            entries.append(entry)
    return ",".join(entries)


def _original(environ: Mapping[str, str], name: str) -> str | None:
    """What the shell had before halton-meter env touched it (None: nothing)."""
    if SAVED + name in environ:
        return environ[SAVED + name]
    if environ.get(MARKER) == "1":
        return None  # set by an earlier `env` in this shell, not by the user
    value = environ.get(name)
    return value if value else None


def _node_options_value(previous: str | None, preload: Path) -> str:
    path = str(preload)
    quoted = path if not any(c in path for c in ' "\\\'') else '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    require = f"--require {quoted}"
    if previous and require in previous:
        return previous
    return f"{previous} {require}" if previous else require


def _previous_cas(environ: Mapping[str, str], home: Path, notes: list[str]) -> list[bytes]:
    """The certificates of CA files the shell named before (a corporate CA), deduplicated."""
    from hm_agent.cabundle import PemError, read_certificates

    extra: list[bytes] = []
    seen: set[str] = set()
    for name in (*BUNDLE_VARS, NODE_CA_VAR):
        value = _original(environ, name)
        if not value or value in seen:
            continue
        seen.add(value)
        path = Path(value).expanduser()
        if path.is_relative_to(home):
            continue  # one of ours, from an older shell
        try:
            extra.extend(read_certificates(path))
        except PemError as exc:
            notes.append(f"{name}: {exc}; it is left out of the bundle")
    return extra


def proxy_env(home: Path, environ: Mapping[str, str] | None = None,
              notes: list[str] | None = None) -> dict[str, str]:
    """The variables to export, in order (writes the CA bundles and the Node preload)."""
    from hm_agent.cabundle import write_ca_bundle, write_node_ca
    from hm_agent.config import ConfigError, load_config
    from hm_agent.home import paths
    from hm_agent.nodepreload import write_node_preload

    environ = os.environ if environ is None else environ
    notes = [] if notes is None else notes
    hp = paths(home)
    try:
        cfg = load_config(hp)
    except ConfigError as exc:
        fail(str(exc))
    if not hp.ca_cert.exists():
        fail(f"the proxy's CA does not exist yet ({hp.ca_cert}). Start the daemon once: halton-meter start")
    extra = _previous_cas(environ, hp.home, notes)
    try:
        bundle = write_ca_bundle(hp, extra)
        node_ca = write_node_ca(hp, extra)
        preload = write_node_preload(hp)
    except OSError as exc:
        fail(f"cannot write the CA bundle in {hp.home}: {exc.strerror}. Check the permissions of {hp.home}.")
    proxy = f"http://{cfg.listen_host}:{cfg.listen_port}"
    metered = metered_loopback(cfg.capture_hosts)
    if metered:
        notes.append(f"NO_PROXY leaves out {', '.join(metered)}: a capture host is on it, so its "
                     "traffic goes through the proxy (other ports there pass through untouched)")
    no_proxy = no_proxy_value(_original(environ, "NO_PROXY") or _original(environ, "no_proxy"), metered)
    values: dict[str, str] = {name: proxy for name in PROXY_VARS}
    values.update({"NO_PROXY": no_proxy, "no_proxy": no_proxy})
    values.update({name: str(bundle) for name in BUNDLE_VARS})
    values[NODE_CA_VAR] = str(node_ca)
    values["NODE_USE_ENV_PROXY"] = "1"
    values["NODE_OPTIONS"] = _node_options_value(_original(environ, "NODE_OPTIONS"), preload)
    saved: dict[str, str] = {}
    for name in MANAGED:
        if SAVED + name in environ:
            saved[SAVED + name] = environ[SAVED + name]
            continue
        before = _original(environ, name)
        if before is not None and before != values[name]:
            saved[SAVED + name] = before
    for name in PROXY_VARS:
        before = _original(environ, name)
        if before and before != proxy:
            notes.append(f"{name} was {before}; programs now use the meter, which connects upstream directly "
                         f"(`halton-meter env --unset` puts it back)")
            break
    return {**values, **saved, MARKER: "1"}


def unset_env(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(variables to restore, variables to unset) that undo `env` in this shell."""
    restore: dict[str, str] = {}
    remove: list[str] = []
    for name in MANAGED:
        if SAVED + name in environ:
            restore[name] = environ[SAVED + name]
            remove.append(SAVED + name)
        else:
            remove.append(name)
    remove.append(MARKER)
    return restore, remove


def _quote_posix(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _quote_fish(value: str) -> str:
    """fish's single quotes read \\ and \' as escapes (POSIX quoting of a value ending in a
    backslash left the quote open, and what followed ran as commands)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_env(variables: Mapping[str, str], shell: str, unset: Sequence[str] = ()) -> str:
    lines = []
    for key, value in variables.items():
        if shell == "fish":
            lines.append(f"set -gx {key} {_quote_fish(value)};")
        elif shell == "powershell":
            lines.append(f"$env:{key} = '{value.replace(chr(39), chr(39) * 2)}'")
        else:
            lines.append(f"export {key}={_quote_posix(value)}")
    for key in unset:
        if shell == "fish":
            lines.append(f"set -e {key};")
        elif shell == "powershell":
            lines.append(f"Remove-Item Env:{key} -ErrorAction SilentlyContinue")
        else:
            lines.append(f"unset {key}")
    return "\n".join(lines)


def _default_shell() -> str:
    name = Path(os.environ.get("SHELL", "bash")).name
    return name if name in SHELLS else "bash"


def _daemon_running(home: Path) -> bool:
    from hm_agent.control import ControlError, DaemonNotRunning, control_call
    from hm_agent.home import paths

    try:
        control_call(paths(home), "ping", timeout=3.0)
    except DaemonNotRunning:
        return False
    except ControlError:
        return True
    return True


def _note(text: str) -> None:
    click.echo("# halton-meter: " + " ".join(text.split()), err=True)


@click.command()
@click.option("--shell", type=click.Choice(SHELLS), default=None, help="Output syntax (default: from $SHELL).")
@click.option("--unset", "undo", is_flag=True, help="Print the commands that undo `env` in this shell.")
def env(shell: str | None, undo: bool) -> None:
    """Print the environment that sends a program's HTTPS through the proxy.

    HTTPS_PROXY/HTTP_PROXY (and lower-case https_proxy/http_proxy, which curl
    and others prefer) point at the daemon; NO_PROXY keeps loopback direct,
    except a loopback host:port you capture; SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
    CURL_CA_BUNDLE and AWS_CA_BUNDLE (boto3) name a bundle of the public CAs, any
    CA file this shell already named, and the daemon's CA; NODE_EXTRA_CA_CERTS
    adds that CA file and the daemon's CA for Node; NODE_USE_ENV_PROXY=1 and a NODE_OPTIONS preload make Node's
    fetch use the proxy. Replaced values are saved, and `--unset` restores them.

    \b
    Examples:
      eval "$(halton-meter env)"
      eval "$(halton-meter env --unset)"
      halton-meter env --shell fish | source
      halton-meter env --shell powershell | Invoke-Expression
    """
    from hm_agent.home import home_dir

    chosen = shell or _default_shell()
    if undo:
        restore, remove = unset_env(os.environ)
        click.echo(format_env(restore, chosen, remove))
        return
    home = home_dir()
    notes: list[str] = []
    variables = proxy_env(home, os.environ, notes)
    click.echo(format_env(variables, chosen))
    for note in notes:
        _note(note)
    if not _daemon_running(home):
        _note("the daemon is not running: programs using these variables cannot connect until "
              "you run `halton-meter start`")
