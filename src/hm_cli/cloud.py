"""`halton-meter cloud …`: pair this machine with a workspace, and watch the sync.

The CLI holds no protocol logic: pairing and syncing run inside the daemon
(the cloud worker lives there, so a paired machine keeps syncing after the
terminal closes). These commands talk to the daemon over its control socket
and print what it says. Where the daemon is not needed (`status`, the local
half of `disconnect`), they read the local files directly.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

import click

from hm_cli.cloud_ui import bullet, console, fail, relative_time, safe, spinner

DEFAULT_BASE_URL = "https://api.haltonmeter.com"


def _home() -> Any:
    from hm_agent.home import home_dir

    return home_dir()


def _call(cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """One control-socket call; a stopped daemon becomes the page's error."""
    from hm_agent.control import ControlError, DaemonNotRunning, control_call

    try:
        return control_call(_home(), cmd, timeout=timeout, **args)
    except DaemonNotRunning:
        fail(
            "daemon not running: the cloud worker lives in the daemon. "
            "Check with `halton-meter status`, start it with `halton-meter start`."
        )
    except ControlError as exc:
        fail(_strip_cmd(str(exc)))


def _require_daemon() -> None:
    """Fail before printing "Requesting…"/"Uploading…" when no daemon can do it."""
    from hm_agent.control import ControlError, DaemonNotRunning, control_call

    try:
        control_call(_home(), "ping", timeout=5.0)
    except DaemonNotRunning:
        _call("ping")  # the same one-line error as every other command
    except ControlError:
        pass  # busy or old: the real call will say


def _strip_cmd(message: str) -> str:
    """The daemon prefixes errors with the command name; users need only the sentence."""
    head, sep, rest = message.partition(" failed: ")
    return rest if sep and head.startswith("cloud.") else message


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


class _WholeHelpGroup(click.Group):
    """`cloud --help` lists each command's whole first sentence (wrapped), never cut with "…"."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group("cloud", cls=_WholeHelpGroup)
def cloud() -> None:
    """Pair this machine with a Halton Meter Cloud workspace and sync its rows.

    \b
    Example:
      halton-meter cloud connect --no-browser
      halton-meter cloud status --json
    """


@cloud.command("connect")
@click.option("--base-url", default=None, metavar="URL",
              help=f"Cloud endpoint (default {DEFAULT_BASE_URL}); persisted to config.toml.")
@click.option("--workspace", default=None, metavar="SLUG",
              help="Pre-select this workspace on the approval page.")
@click.option("--no-browser", is_flag=True, help="Print the approval URL; do not open a browser.")
def connect(base_url: str | None, workspace: str | None, no_browser: bool) -> None:
    """Pair this machine: print a code, approve it in the browser.

    \b
    Example:
      halton-meter cloud connect --base-url http://127.0.0.1:8787 --no-browser
    """
    _require_daemon()
    _stop_signals_cancel_too()
    try:
        with spinner(f"Requesting pairing code from {safe(_host(base_url or _configured_base_url()))}…"):
            started = _call("cloud.connect.start", timeout=40.0, base_url=base_url, workspace=workspace,
                            progress=True)
            while started["state"] == "starting":  # a failed attempt, shown as it happens
                for retry in started.get("retries") or []:
                    console.print(f"  attempt {retry['attempt']}/{retry['of']}, retrying in "
                                  f"{float(retry['in_s']):.0f} s: {safe(retry['reason'])}")
                started = _call("cloud.connect.next", timeout=40.0, seen=started["seen"])
        code = started["user_code"]
        url = started["verification_uri_complete"]
        bullet(f"Pairing code: [bold]{safe(code)}[/]")
        bullet(f"Approve at: {safe(url)}")
        bullet(_valid_for(started.get("expires_in")))
        if not no_browser:
            _open_browser(url)
        with spinner("Waiting for approval… (Ctrl-C to cancel)"):
            while True:
                reply = _wait_call()
                if reply["state"] != "pending":
                    break
    except KeyboardInterrupt:
        _cancel_pairing()
        sys.exit(128 + _stopped_by[0])
    _stop_signals_stop_again()
    state = reply["state"]
    if state == "approved":
        name, slug = reply.get("workspace_name") or reply.get("workspace_slug"), reply.get("workspace_slug")
        bullet(f"Paired with workspace [bold]{safe(name)}[/]" + (f" ({safe(slug)})." if slug != name else "."),
               ok=True)
        bullet("The cloud worker starts within 15 s; check with `halton-meter cloud status`.")
        return
    if state == "expired":
        fail("the pairing code expired (codes last 10 minutes). Run `halton-meter cloud connect` again for a fresh code.")
    if state == "denied":
        fail("the pairing was denied in the browser. Run `halton-meter cloud connect` again if that was a mistake.")
    fail(str(reply.get("error") or f"pairing failed ({state}). Run `halton-meter cloud connect` again."))


_stopped_by = [int(signal.SIGINT)]


def _stop_signals_cancel_too() -> None:
    """SIGTERM (`kill`, `timeout`) and SIGHUP (the terminal closed) cancel the pairing as Ctrl-C does.

    Otherwise the daemon would go on polling and the printed code stay approvable for its
    10 minutes with nobody watching. A signal the caller set to be ignored (`nohup`) stays
    ignored. After a hangup there is no terminal to print to: output goes to /dev/null.
    """

    def stop(signum: int, frame: object) -> None:
        _stopped_by[0] = signum
        if signum == signal.SIGHUP:
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, stop)


def _stop_signals_stop_again() -> None:
    """Once the answer is in, SIGTERM and SIGHUP end the command as before (nothing to cancel)."""
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(sig, signal.SIG_DFL)


def _valid_for(expires_in: object, now: float | None = None) -> str:
    """'The code is valid for 10 minutes, until 14:32.' (local time)."""
    import time

    try:
        seconds = max(0, int(float(expires_in)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = 600
    until = time.strftime("%H:%M", time.localtime((now if now is not None else time.time()) + seconds))
    minutes = round(seconds / 60)
    span = f"{minutes} minute{'s' if minutes != 1 else ''}" if seconds >= 60 else f"{seconds} s"
    return f"The code is valid for {span}, until {until}."


def _wait_call() -> dict[str, Any]:
    """One long poll for the approval; a daemon that stopped meanwhile is said so."""
    from hm_agent.control import DaemonNotRunning, DaemonStopped, control_call

    try:
        return control_call(_home(), "cloud.connect.wait", timeout=40.0, wait=25.0)
    except (DaemonNotRunning, DaemonStopped):
        fail("the daemon stopped while waiting for approval, so nothing was paired. "
             "Start it with `halton-meter start`, then run `halton-meter cloud connect` again.")
    except Exception:
        return _call("cloud.connect.wait", timeout=40.0, wait=25.0)


def _cancel_pairing() -> None:
    """Ctrl-C: the daemon stops polling and tells the backend, so the code cannot be approved."""
    from hm_agent.control import ControlError, DaemonNotRunning, control_call

    try:
        with spinner("Cancelling the pairing…"):
            reply = control_call(_home(), "cloud.connect.cancel", timeout=20.0)
    except (DaemonNotRunning, ControlError, OSError):
        reply = {}
    if reply.get("state") == "approved":
        name = reply.get("workspace_name") or reply.get("workspace_slug")
        bullet(f"Too late to cancel: this machine was already paired with workspace [bold]{safe(name)}[/]. "
               f"Undo it with `halton-meter cloud disconnect`.", colour="yellow")
        sys.exit(0)
    backend = str(reply.get("backend") or "")
    if backend.startswith("not told"):
        console.print(safe(
            f"Cancelled here, but the backend was {backend}: the code stays valid until it expires "
            f"(10 minutes); if someone approves it, revoke the machine on the workspace's devices page. "
            f"Run `halton-meter cloud connect` again to pair.", 1000))
        return
    console.print("Cancelled: nothing was written, and the code can no longer be approved. "
                  "Run `halton-meter cloud connect` again to pair.")


def _configured_base_url() -> str:
    try:
        from hm_agent.config import load_config

        return str(load_config(_home()).cloud_base_url or DEFAULT_BASE_URL)
    except Exception:
        return DEFAULT_BASE_URL


def browsable(url: object) -> bool:
    """True for an http(s) URL with a host and nothing a browser's command line could read as
    an option. The URL comes from the backend: a hostile one answered ``--gpu-launcher=…``
    (webbrowser passes it to the browser as an argument) or ``file:``/other schemes, which
    ``xdg-open`` hands to whatever handler is registered."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or url != url.strip() or any(ord(c) < 33 or ord(c) == 127 for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not url.startswith("-")


def _open_browser(url: str) -> None:
    from hm_cli._ui import open_browser

    if not browsable(url):
        console.print("  (not opening it: the backend's URL is not a plain http(s) address; check it, "
                      "then open it yourself)")
        return
    if not open_browser(url):
        console.print("  (no display found: open the URL above in any browser)")


@cloud.command("whoami", short_help="Which workspace and machine this token belongs to.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable shape.")
def whoami(as_json: bool) -> None:
    """Ask the backend which workspace and machine this token belongs to.

    \b
    Example:
      halton-meter cloud whoami
    """
    _require_daemon()
    with spinner("Asking the backend…"):
        reply = _call("cloud.whoami", timeout=30.0)
    info = {k: reply.get(k) for k in ("workspace_id", "workspace_slug", "workspace_name", "machine_id", "hostname",
                                      "retention_days")}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    bullet(f"Workspace: {safe(info['workspace_slug'])}")
    bullet(f"Machine id: {safe(info['machine_id'])}")
    bullet(f"Hostname: {safe(info['hostname'])}")
    days = info["retention_days"]
    bullet("Cloud retention: " + (f"{safe(days)} days" if days else "keeps everything"))


@cloud.command("status", short_help="The sync state: ACTIVE, DEGRADED, PAUSED or NOT-CONFIGURED.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable shape (see docs/cloud-sync.md).")
def status(as_json: bool) -> None:
    """Show the sync state: ACTIVE, DEGRADED, PAUSED or NOT-CONFIGURED.

    \b
    Example:
      halton-meter cloud status --json
    """
    from hm_agent.cloudstatus import cloud_status

    snap = cloud_status(_home())
    if as_json:
        click.echo(json.dumps(snap, indent=2))
        return
    colour = {"ACTIVE": "green", "DEGRADED": "yellow", "PAUSED": "yellow"}.get(snap["state"], "red")
    bullet(f"State: {safe(snap['state'])}", colour=colour)
    if snap.get("paused_reason"):
        from hm_agent.cloudstatus import explain_paused

        bullet(f"Paused: {safe(explain_paused(snap['paused_reason']))}", colour=colour)
    unsynced = snap.get("unsynced_rows", 0)
    bullet(f"Last sync: {safe(relative_time(snap.get('last_sync_at')))}")
    bullet(f"Unsynced rows: {'unknown' if unsynced is None else safe(unsynced)}")
    bullet(f"Last reconcile: {safe(relative_time(snap.get('last_reconcile_at')))}")
    bodies = snap.get("bodies") or {}
    if bodies.get("mode") not in (None, "off"):
        accepted = bodies.get("workspace_accepts")
        accepts = ("the workspace accepts them" if accepted is True
                   else "the workspace does not accept them" if accepted is False
                   else "the workspace's answer not known yet")
        bullet(f"Request bodies: {safe(bodies['mode'])} ({accepts})")
    if snap.get("last_error"):
        bullet(f"Last error: {safe(snap['last_error'])}", colour="red")
    if snap.get("quarantined_rows"):
        bullet(f"Quarantined rows: {safe(snap['quarantined_rows'])} (rejected by the backend; see `halton-meter doctor`)",
               colour="yellow")
    if snap.get("hint"):
        console.print(f"  {safe(snap['hint'])}")


@cloud.command("sync")
@click.option("--reconcile", is_flag=True, help="Also compare daily totals with the cloud and re-send what differs.")
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable shape.")
def sync(reconcile: bool, as_json: bool) -> None:
    """Upload unsynced rows now.

    \b
    Example:
      halton-meter cloud sync --reconcile
    """
    _require_daemon()
    if as_json:
        reply = _call("cloud.sync", timeout=600.0, reconcile=reconcile)
    else:
        reply = _sync_with_progress(reconcile)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    for b in reply.get("batches", []):
        if b.get("status") == 200:
            dup = f", {b['duplicates']} duplicates" if b.get("duplicates") else ""
            bullet(safe(f"POST /v1/requests/batch → 200 OK ({b['accepted']} rows accepted{dup})"), ok=True)
        elif b.get("status") is None:  # no HTTP answer to show, or a retryable one: the reason says
            bullet(safe(f"POST /v1/requests/batch → {b.get('reason', 'failed')}"), colour="red")
        else:
            bullet(safe(f"POST /v1/requests/batch → {b.get('status')} {b.get('reason', '')}".rstrip()), colour="red")
    if not reply.get("batches") and not reply.get("error"):
        bullet("Nothing to upload: every row is synced.", ok=True)
    if reply.get("reconcile"):
        rec = reply["reconcile"]
        bullet(safe(f"Reconcile {rec['from_date']}..{rec['to_date']}: "
                    f"{len(rec.get('resent_days', []))} day(s) re-sent, {rec.get('resent_rows', 0)} rows"))
    if reply.get("error"):
        fail(reply["error"])


def _unsynced() -> int | None:
    from hm_agent.control import ControlError, DaemonNotRunning, control_call

    try:
        value = control_call(_home(), "cloud.status", timeout=5.0).get("unsynced_rows")
    except (ControlError, DaemonNotRunning, OSError):
        return None
    return int(value) if isinstance(value, int) else None


def _sync_with_progress(reconcile: bool) -> dict[str, Any]:
    """`cloud.sync` in a thread while the backlog is watched: a bar on a terminal, plain
    lines otherwise (rows uploaded, rows/s, time left)."""
    import threading
    import time

    from hm_cli.cloud_ui import SyncProgress

    total = _unsynced() or 0
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.update(_call("cloud.sync", timeout=600.0, reconcile=reconcile))
        except BaseException as exc:  # SystemExit from fail(): re-raised on this thread
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    with SyncProgress(total, reconcile) as progress:
        while worker.is_alive():
            worker.join(0.5)
            if worker.is_alive():
                left = _unsynced()
                if left is not None:
                    progress.update(left, time.monotonic())
    if failure:
        raise failure[0]
    return result


@cloud.command("pause")
def pause() -> None:
    """Stop uploading until `cloud resume` (capture goes on locally).

    \b
    Example:
      halton-meter cloud pause
    """
    _call("cloud.pause")
    bullet("Sync paused. Rows keep being captured locally; `halton-meter cloud resume` restarts the upload.",
           colour="yellow")


@cloud.command("resume")
def resume() -> None:
    """Resume uploading after `cloud pause`.

    After a 401 (token refused) it tries again: the backend decides.

    \b
    Example:
      halton-meter cloud resume
    """
    reply = _call("cloud.resume")
    if reply.get("resumed_from") == "paused_unauthorised":
        bullet("Sync resumed. The backend refused this machine's token before: if it was "
               "revoked, the next upload pauses again; then run `halton-meter cloud connect`.",
               colour="yellow")
        return
    bullet("Sync resumed; the worker starts within 15 s.", ok=True)


@cloud.command("disconnect")
def disconnect() -> None:
    """Revoke this machine's token and wipe the local credentials.

    \b
    Example:
      halton-meter cloud disconnect
    """
    from hm_agent.cloudstatus import cloud_status, local_disconnect
    from hm_agent.config import ConfigError, load_config
    from hm_agent.control import ControlError, DaemonNotRunning, control_call

    try:
        load_config(_home())  # disconnect rewrites config.toml: it must parse first
    except ConfigError as exc:
        fail(f"{exc}\nFix config.toml first: `cloud disconnect` sets cloud.enabled = false in it.")
    if cloud_status(_home())["state"] == "NOT-CONFIGURED":
        bullet("This machine is not paired; nothing to disconnect.", colour="yellow")
        return
    base = _configured_base_url()
    with spinner(f"Revoking token at {safe(_host(base))}…"):
        try:
            reply = control_call(_home(), "cloud.disconnect", timeout=40.0)
        except DaemonNotRunning:
            reply = local_disconnect(_home())
        except ControlError as exc:
            fail(_strip_cmd(str(exc)))
    if reply.get("not_paired"):
        bullet("This machine is not paired; nothing to disconnect.", colour="yellow")
        return
    base = reply.get("base_url") or base
    if reply.get("revoked"):
        bullet("Token revoked.", ok=True)
    else:
        bullet(safe(f"Could not revoke the token at {_host(base)}: {reply.get('revoke_error', 'unreachable')}."),
               colour="red")
        console.print(safe(f"  Revoke it from the workspace's devices page: <app>/<workspace>/settings/devices "
                           f"(machine {reply.get('machine_id', '?')}).", 1000))
    bullet("Local: cloud.enabled = false; credentials wiped.", ok=True)

