"""mitmproxy 11 in its own thread with its own asyncio loop (one Master per process).

The supervisor (asyncio or trio) never shares a loop with mitmproxy: the
proxy thread owns one asyncio loop for its whole life, and the two sides meet
only through thread-safe calls (``Master.shutdown``) and the writer queue.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any

from .addon import MeterAddon
from .writer import RowWriter

log = logging.getLogger("hm_agent.proxy")


class ProxyStartError(Exception):
    """The proxy could not bind or start; the message says why and what to do."""


class _RedactSecrets(logging.Filter):
    """mitmproxy log lines can quote URLs and headers: strip anything key-like."""

    _PATTERNS = (
        (re.compile(r"(?i)([?&](?:key|api[-_]?key|access_token)=)[^&\s'\"]+"), r"\1[redacted]"),
        (re.compile(r"(?i)(authorization:\s*|bearer\s+)[^\s'\",]+"), r"\1[redacted]"),
        (re.compile(r"(?i)((?:x-api-key|api-key|x-goog-api-key)['\"]?\s*[:=]\s*['\"]?)[^\s'\",]+"), r"\1[redacted]"),
        (re.compile(r"\b(sk-|hm_sync_)[A-Za-z0-9_\-]{8,}"), r"\1[redacted]"),
    )

    @classmethod
    def redact(cls, text: str) -> str:
        for pattern, repl in cls._PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        record.msg, record.args = self.redact(message), None
        return True


class RedactingFormatter(logging.Formatter):
    """Also redacts tracebacks, which the filter above never sees."""

    def format(self, record: logging.LogRecord) -> str:
        return _RedactSecrets.redact(super().format(record))


REDACT_FILTER = _RedactSecrets()


# The mitmproxy addons a metering proxy needs. mitmproxy calls every addon on
# every event, so the ~30 defaults (playback, map/modify, save, export, the
# onboarding app, ...) cost CPU on each request and give the daemon nothing.
_NEEDED_ADDONS = {
    "Core", "Block", "DisableH2C", "Proxyserver", "DnsResolver", "NextLayer", "TlsConfig", "ProxyAuth",
    "UpstreamAuth",
}


def metering_addons(defaults: list[Any]) -> list[Any]:
    return [a for a in defaults if type(a).__name__ in _NEEDED_ADDONS]


class ProxyThread:
    """Runs mitmproxy; :meth:`start` returns once the port is bound or raises ProxyStartError."""

    def __init__(self, config: Any, confdir: Path, writer: RowWriter) -> None:
        self.config = config
        self.confdir = confdir
        self.addon = MeterAddon(config, writer)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._master: Any = None
        self.bound: tuple[str, int] | None = None

    def start(self, timeout: float = 30.0) -> tuple[str, int]:
        self._thread = threading.Thread(target=self._run, name="hm-mitmproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ProxyStartError(f"mitmproxy did not start within {timeout:.0f}s; see the log file")
        if self._error is not None:
            raise ProxyStartError(self._error)
        assert self.bound is not None
        return self.bound

    def stop(self, timeout: float = 10.0) -> None:
        if self._master is not None:
            self._master.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the daemon exits
            if not self._ready.is_set():
                self._error = f"mitmproxy failed to start: {exc}"
                self._ready.set()
            else:
                log.exception("mitmproxy stopped unexpectedly")

    async def _main(self) -> None:
        from mitmproxy import options
        from mitmproxy.addons import default_addons
        from mitmproxy.master import Master

        cfg = self.config
        trusted = None
        if cfg.ssl_verify_upstream_trusted_ca:
            # mitmproxy uses this file *instead of* certifi: give it both.
            from .cabundle import PemError, write_upstream_bundle
            from .home import paths

            try:
                trusted = write_upstream_bundle(paths(self.confdir.parent), cfg.ssl_verify_upstream_trusted_ca)
            except (PemError, OSError) as exc:
                self._error = (f"[proxy] ssl_verify_upstream_trusted_ca: {exc}. "
                               "Point it at a PEM file of CA certificates, or set it to \"\".")
                self._ready.set()
                return
        opts = options.Options()
        master = Master(opts, event_loop=asyncio.get_running_loop())
        master.addons.add(*metering_addons(default_addons()))
        master.addons.add(self.addon)
        self.confdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        update: dict[str, Any] = {
            "listen_host": cfg.listen_host,
            "listen_port": cfg.listen_port,
            "confdir": str(self.confdir),
            "mode": ["regular"],
            # Only LLM calls are decrypted, and their bodies are small JSON; other
            # traffic is streamed in responseheaders. Never buffer big bodies.
            "stream_large_bodies": "1m",
        }
        if trusted is not None:
            update["ssl_verify_upstream_trusted_ca"] = str(trusted)
        opts.update(**update)
        self._master = master
        ps = master.addons.get("proxyserver")
        ok = await ps.setup_servers()
        if not ok:
            errors = [str(s.last_exception) for s in ps.servers if s.last_exception]
            detail = errors[0] if errors else "unknown error"
            self._error = _explain_bind_error(cfg.listen_host, cfg.listen_port, detail)
            # done() is never reached on this path: remove mitmproxy's root log handler
            # ourselves, or the next log call anywhere hits this closed loop and raises.
            master._legacy_log_events.uninstall()
            self._ready.set()
            return
        addrs = ps.listen_addrs()
        host, port = addrs[0][0], addrs[0][1]
        self.bound = (str(host), int(port))
        try:
            await master.running()
            self._ready.set()
            await master.should_exit.wait()
        finally:
            await master.done()


def _explain_bind_error(host: str, port: int, detail: str) -> str:
    if "address already in use" in detail.lower() or "errno 98" in detail.lower() or "errno 48" in detail.lower():
        return (
            f"port {port} on {host} is already in use. Stop the program using it "
            f"(e.g. `lsof -i :{port}`), or set [proxy] listen_port in config.toml to a free port."
        )
    if "permission denied" in detail.lower():
        return f"not allowed to listen on {host}:{port} ({detail}). Use a port above 1024 in config.toml."
    return f"cannot listen on {host}:{port}: {detail}. Check [proxy] in config.toml."
