"""The daemon process: files, writer, proxy thread, supervisor, control socket.

``python -m hm_agent run`` (and ``halton-meter run``) call :func:`main`. The
order matters: the writer starts before the proxy (so no captured call has
nowhere to go) and stops after it (so every pending row is written before
exit).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Config, ConfigError, ensure_config, load_config
from .control import DaemonNotRunning, command, control_call, serve_forever
from .home import (
    HomeError,
    HomePaths,
    ensure_home,
    ensure_machine_id,
    ensure_private_dir,
    ensure_socket_dir,
    paths,
    write_atomic,
)
from .store import Store, StoreError, unreadable

log = logging.getLogger("hm_agent.daemon")

# How long `stop` waits for a locked database before the rows go to the spill file.
DRAIN_TIMEOUT_S = 30.0


class DaemonStartError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def utc_today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


if TYPE_CHECKING:
    from .cloudservice import CloudContext


class DaemonContext:
    """What components and control commands get: the daemon's live parts."""

    def __init__(self, hp: HomePaths, config: Config, machine_id: str, backend: str) -> None:
        self.home = hp
        self.config = config
        self.machine_id = machine_id
        self.backend = backend
        self.started_at = time.time()
        self.version = __version__
        self.store: Store = Store(hp.db)  # shared, lock-protected; for quick reads on the loop
        self.writer: Any = None
        self.proxy: Any = None
        self.outputs: Any = None  # hm_agent.outputs.Outputs: budgets, alerts, metrics
        self.supervisor: Any = None
        self.problems: list[str] = []
        self._config_mtime = _mtime(hp.config)
        self._stop_scope: Any = None
        self.stop_requested = False
        self._drain_lock = threading.Lock()
        self._drained: dict[str, Any] | None = None

    def drain(self) -> dict[str, Any]:
        """Stop the proxy, then the writer (rows pending are written or spilled). Idempotent."""
        with self._drain_lock:
            if self._drained is None:
                if self.proxy is not None:
                    log.info("stopping: closing the proxy, then writing %d pending rows", self.writer.pending)
                    self.proxy.stop()
                if self.writer is not None:
                    self.writer.stop(timeout=DRAIN_TIMEOUT_S)
                    self._drained = self.writer.stop_outcome()
                else:
                    self._drained = {"written": 0, "unwritten": 0, "spilled_to": None, "lost": 0}
                if self.outputs is not None:
                    self.outputs.stop()
            return self._drained

    def request_stop(self) -> None:
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    def wake(self) -> None:
        if self.supervisor is not None:
            self.supervisor.wake()

    def reload_config_if_changed(self) -> None:
        mtime = _mtime(self.home.config)
        if mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        try:
            config = load_config(self.home)
        except ConfigError as exc:
            self.problems = [f"config.toml changed but cannot be used (keeping the old settings): {exc}"]
            log.error("%s", self.problems[0])
            return
        self.problems = []
        old = self.config
        self.config = config
        if self.writer is not None:
            self.writer.body_settings = config.bodies
        if self.proxy is not None:
            self.proxy.addon.reload(config)
        if self.outputs is not None:
            self.outputs.reload(config)
        if (old.listen_host, old.listen_port, old.ssl_verify_upstream_trusted_ca) != (
            config.listen_host, config.listen_port, config.ssl_verify_upstream_trusted_ca,
        ):
            self.problems.append("[proxy] settings changed: run `halton-meter restart` to apply them")
        log.info("config.toml reloaded")

    def status(self) -> dict[str, Any]:
        from .retention import database_facts

        writer = self.writer.health() if self.writer is not None else {}
        proxy_ok = self.proxy is not None and self.proxy.alive
        problems = list(self.problems)
        if not proxy_ok:
            problems.append("the proxy thread has stopped; run `halton-meter restart`")
        if writer.get("last_error"):
            problems.append(f"{writer['last_error']} ({writer.get('pending', 0)} rows waiting in memory)")
        components = self.supervisor.health() if self.supervisor is not None else {}
        bound = self.proxy.bound if self.proxy is not None else None
        try:
            rows_today = self.store.count_rows(utc_today())
        except Exception as exc:
            rows_today = None
            problems.append(unreadable(self.home.db, exc))
        return {
            "version": self.version,
            "home": str(self.home.home),
            "daemon": {
                "running": True,
                "healthy": not problems,
                "pid": os.getpid(),
                "backend": self.backend,
                "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "uptime_s": round(time.time() - self.started_at, 1),
                "problems": problems,
            },
            "proxy": {
                "bound": proxy_ok,
                "host": bound[0] if bound else self.config.listen_host,
                "port": bound[1] if bound else self.config.listen_port,
            },
            "rows": {
                "day": utc_today(),
                "today": rows_today,
                "pending": writer.get("pending", 0),
                "written": writer.get("written", 0),
                "dropped": writer.get("dropped", 0),
                "quarantined": writer.get("quarantined", 0),
            },
            "database": {**database_facts(self.home.db, self.store), "retention_days": self.config.retention_days},
            "attribution": self.proxy.addon.attribution_health() if self.proxy is not None else None,
            "ca_cert": str(self.home.ca_cert),
            "machine_id": self.machine_id,
            "cloud": cloud_status(self.config, components),
            "components": components,
            "config_warnings": list(self.config.warnings),
            **({"budgets": self.outputs.budgets()} if self.outputs is not None else {}),
        }


def cloud_status(config: Config, components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The cloud block of status: NOT-CONFIGURED unless [cloud] enabled = true."""
    if not config.cloud_enabled:
        return {"state": "NOT-CONFIGURED", "enabled": False}
    worker = components.get("cloud")
    if worker is None:
        return {"state": "UNAVAILABLE", "enabled": True, "detail": "this daemon has no cloud worker"}
    detail = worker.get("detail") or {}
    state = detail.get("state") if isinstance(detail, dict) else None
    if not state:
        state = "STARTING" if worker["state"] in ("starting", "running") else worker["state"].upper()
    return {"state": state, "enabled": True, "worker": worker}


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


# -- built-in control commands -------------------------------------------------


@command("ping")
async def _ping(ctx: DaemonContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"pid": os.getpid(), "version": ctx.version}


@command("status")
async def _status(ctx: DaemonContext, args: dict[str, Any]) -> dict[str, Any]:
    return ctx.status()


@command("wake")
async def _wake(ctx: DaemonContext, args: dict[str, Any]) -> dict[str, Any]:
    ctx.wake()
    return {"woken": True}


@command("stop")
async def _stop(ctx: DaemonContext, args: dict[str, Any]) -> dict[str, Any]:
    """Close the proxy, write every pending row, then answer how that went, then exit."""
    import anyio

    ctx.stop_requested = True  # the loop stops once this reply is sent (serve_connection)
    rows = await anyio.to_thread.run_sync(ctx.drain)
    return {"stopping": True, "pid": os.getpid(), "rows": rows}


# -- process -----------------------------------------------------------------


class _BindErrorFilter(logging.Filter):
    """mitmproxy's own bind error suggests `--mode regular@PORT`, an option this tool
    does not have; the daemon explains the error itself. Keep the record in the log
    file without that advice, and keep it off the terminal (it would print twice)."""

    def __init__(self, console: bool) -> None:
        super().__init__()
        self.console = console

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("mitmproxy"):
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        if "failed to listen" not in message:
            return True
        if self.console:
            return False
        record.msg = "\n".join(ln for ln in message.splitlines() if not ln.startswith("Try specifying"))
        record.args = None
        return True


def setup_logging(hp: HomePaths, foreground: bool) -> None:
    from .proxy import REDACT_FILTER, RedactingFormatter

    if not hp.log.exists():
        os.close(os.open(hp.log, os.O_WRONLY | os.O_CREAT, 0o600))
    handler = logging.handlers.RotatingFileHandler(hp.log, maxBytes=5 * 1024 * 1024, backupCount=3)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(REDACT_FILTER)
    handler.addFilter(_BindErrorFilter(console=False))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # mitmproxy logs every connection at INFO; only its warnings are worth keeping.
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    if foreground:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.addFilter(REDACT_FILTER)
        console.addFilter(_BindErrorFilter(console=True))
        console.setFormatter(RedactingFormatter("halton-meter: %(message)s"))
        root.addHandler(console)


def _lock_pid_file(hp: HomePaths) -> int:
    """Hold an exclusive lock on daemon.pid for the process's life: one daemon per home."""
    fd = os.open(hp.pid, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            other = hp.pid.read_text().strip()
        except OSError:
            other = "?"
        raise DaemonStartError(
            f"a daemon is already running for {hp.home} (pid {other}). "
            f"Use `halton-meter status`, or `halton-meter restart`."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def prepare(hp_home: Path | None) -> tuple[HomePaths, Config, str]:
    """Create/check the home and read its files; raises HomeError/ConfigError."""
    hp = ensure_home(hp_home)
    ensure_socket_dir(hp)
    machine_id = ensure_machine_id(hp)
    ensure_config(hp)
    config = load_config(hp)
    return hp, config, machine_id


def run_daemon(home: Path | None, backend: str = "asyncio", ready_fd: int | None = None, foreground: bool = True) -> int:
    """Run until SIGTERM/SIGINT or the stop command. Returns the exit code."""
    import anyio

    from .proxy import ProxyStartError, ProxyThread
    from .supervisor import Supervisor, load_components
    from .writer import RowWriter

    def report_ready(message: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, message.encode() + b"\n")
                os.close(ready_fd)
            except OSError:
                pass
            ready_fd = None

    logging_ready = False
    pid_fd: int | None = None

    def fail(message: str, release_lock: bool = True) -> int:
        # A start that failed lets go of daemon.pid before `start` hears of it, so a
        # `run` or `start` right after does not find a lock held by this exiting process.
        if release_lock and pid_fd is not None:
            os.close(pid_fd)
        report_ready("error: " + message)  # first: `start` is waiting for this line
        if not (logging_ready and foreground):  # else the console log handler prints it
            print(f"halton-meter: {message}", file=sys.stderr)
        if logging_ready:
            log.error("%s", message)
        return 1

    # Whatever this process creates without an explicit mode (a rotated log,
    # mitmproxy's files) is the user's alone.
    os.umask(0o077)
    try:
        hp, config, machine_id = prepare(home)
    except (HomeError, ConfigError) as exc:
        return fail(str(exc))
    setup_logging(hp, foreground)
    logging_ready = True
    try:
        pid_fd = _lock_pid_file(hp)
    except DaemonStartError as exc:
        return fail(str(exc))
    for warning in config.warnings:
        log.warning("config: %s", warning)
    try:
        ctx = DaemonContext(hp, config, machine_id, backend)
    except StoreError as exc:
        return fail(str(exc))
    spills = [hp.spill]
    try:  # a full home disk: the runtime dir (another file system, usually), if it is ours alone
        ensure_private_dir(hp.spill_fallback.parent)
        spills.append(hp.spill_fallback)
    except HomeError as exc:
        log.warning("no fallback for unwritten rows: %s", exc)
    writer = RowWriter(hp.db, config.pricing_overrides, spill_paths=spills)
    writer.body_settings, writer.home = config.bodies, hp.home
    writer.start()
    ctx.writer = writer
    from .outputs import Outputs

    ctx.outputs = Outputs(hp, config, machine_id)
    writer.after_write.append(ctx.outputs.poll)
    proxy = ProxyThread(config, hp.mitm_confdir, writer)
    proxy.addon.budgets = ctx.outputs.tracker
    ctx.proxy = proxy
    try:
        host, port = proxy.start()
    except ProxyStartError as exc:
        writer.stop()
        ctx.outputs.stop()
        return fail(str(exc))
    try:
        from .cabundle import write_ca_bundle
        from .nodepreload import write_node_preload

        write_ca_bundle(hp)
        write_node_preload(hp)
    except Exception as exc:  # env/doctor rewrite them; not worth failing the start
        log.warning("could not write the CA bundle or the Node preload in %s: %s", hp.home, exc)
    ctx.supervisor = Supervisor(load_components())
    sock_path = hp.control_socket
    # Everything imported so far (mitmproxy, price tables, anyio) lives as long as
    # the process: move it out of the collector's sight, so collections triggered
    # by per-request garbage do not rescan it on the proxy thread.
    import gc

    gc.collect()
    gc.freeze()

    async def async_main() -> None:
        ensure_socket_dir(hp)  # checked in prepare() too; again here, just before use
        sock_path.unlink(missing_ok=True)
        listener = await anyio.create_unix_listener(sock_path)
        os.chmod(sock_path, 0o600)
        write_atomic(hp.state, json.dumps({
            "pid": os.getpid(), "backend": backend, "proxy_host": host, "proxy_port": port,
            "control_socket": str(sock_path), "started_at": ctx.started_at, "version": ctx.version,
        }).encode(), 0o600)
        log.info("daemon %s started (pid %d, %s): mitm bound on %s:%d", ctx.version, os.getpid(), backend, host, port)
        report_ready(f"ok {host}:{port}")
        with anyio.CancelScope() as scope:
            ctx._stop_scope = scope
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, scope)
                tg.start_soon(ctx.supervisor.run, ctx)
                tg.start_soon(serve_forever, listener, ctx)

    code = 0
    try:
        anyio.run(async_main, backend=backend)
    except Exception as exc:
        code = fail(f"the daemon stopped on an error: {exc}", release_lock=False)
        log.exception("supervisor failed")
    finally:
        outcome = ctx.drain()
        if outcome["unwritten"]:
            where = outcome["spilled_to"] or "nowhere: they are lost"
            message = (f"{outcome['unwritten']} rows could not be written to {hp.db} "
                       f"({outcome.get('error') or 'database unwritable'}); kept in {where}")
            log.error("%s", message)
            print(f"halton-meter: {message}", file=sys.stderr)
            code = code or 1
        ctx.store.close()
        for leftover in (sock_path, hp.state, hp.pid):
            leftover.unlink(missing_ok=True)
        if pid_fd is not None:
            os.close(pid_fd)
        log.info("daemon stopped")
    return code


async def _watch_signals(scope: Any) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


def is_running(home: Path | None = None) -> bool:
    try:
        control_call(home, "ping", timeout=2.0)
    except DaemonNotRunning:
        return False
    except Exception:
        return True  # something answers, even if badly
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hm_agent", description="Run the Halton Meter daemon in the foreground.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    run.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return run_daemon(paths().home, backend=args.backend, ready_fd=args.ready_fd, foreground=not args.background)


if TYPE_CHECKING:

    def _gives_the_cloud_what_it_needs(ctx: DaemonContext) -> CloudContext:
        return ctx  # mypy checks DaemonContext against the cloud modules' typed context
