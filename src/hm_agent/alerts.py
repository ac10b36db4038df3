"""Budget alerts, delivered on their own thread: desktop notification and webhooks.

The tracker has already logged the alert and recorded it in ``budget_alerts``
(so it fires once per threshold and period, across restarts). This thread
sends it: a desktop notification where ``notify-send`` (Linux) or
``osascript`` (macOS) exists, and a POST to every ``[[alerts.webhooks]]``
URL with a Slack-compatible body (``text``) plus structured fields. Each
POST has a timeout and is retried with backoff; once every target has been
tried the alert is marked delivered. An alert whose delivery a crash cut
short is sent again when the daemon starts. Nothing here runs on the proxy
thread or the writer thread (``submit`` only queues).
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .budgets import Alert
from .store import Store

log = logging.getLogger("hm_agent.alerts")

QUEUE_MAX = 1000
TIMEOUT_S = 5.0
ATTEMPTS = 3
BACKOFF_S = (1.0, 3.0)
_STOP: Any = object()


def webhook_body(alert: Alert, machine_id: str, hostname: str) -> dict[str, Any]:
    """Slack's ``text`` plus the alert's fields (docs/budgets.md)."""
    return {
        "text": alert.text(),
        "event": "budget.threshold",
        **asdict(alert),
        "machine_id": machine_id,
        "hostname": hostname,
    }


def post_json(url: str, body: dict[str, Any], timeout: float = TIMEOUT_S) -> int:
    """POST once; returns the HTTP status (0 when the server could not be reached)."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "halton-meter-alerts",
    })
    # Never through HTTPS_PROXY: that may point at this very daemon.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # HTTPException: an answer that is not HTTP
        log.info("webhook %s unreachable: %s", _safe_url(url), exc if isinstance(exc, OSError) else type(exc).__name__)
        return 0


def _safe_url(url: str) -> str:
    """Slack-style webhook URLs carry their secret in the path, others in user:password@:
    log the scheme, host and port only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = parts.hostname or "?"
    return f"{parts.scheme}://{'[' + host + ']' if ':' in host else host}{port}/…"


def desktop_notify(title: str, text: str) -> bool:
    if sys.platform == "darwin" and shutil.which("osascript"):
        script = f"display notification {_applescript(text)} with title {_applescript(title)}"
        argv = ["osascript", "-e", script]
    elif shutil.which("notify-send"):
        argv = ["notify-send", "--app-name=halton-meter", title, text]
    else:
        return False
    try:
        subprocess.run(argv, timeout=TIMEOUT_S, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("desktop notification failed: %s", exc)
        return False
    return True


def _applescript(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AlertSender:
    def __init__(self, db_path: Path, webhooks: list[str], machine_id: str, hostname: str) -> None:
        self.db_path = db_path
        self.webhooks = list(webhooks)
        self.machine_id = machine_id
        self.hostname = hostname
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None

    def submit(self, alert: Alert) -> None:
        """Queue an alert; never blocks."""
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            log.error("alert queue full; not sending: %s", alert.text())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hm-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def health(self) -> dict[str, Any]:
        return {"webhooks": len(self.webhooks), "sent": self.sent, "failed": self.failed,
                "queued": self._queue.qsize(), "dropped": self.dropped, "last_error": self.last_error}

    def _run(self) -> None:
        store = Store(self.db_path, busy_timeout_ms=5000)
        try:
            since = (datetime.now(UTC) - timedelta(days=1)).isoformat(timespec="seconds").replace("+00:00", "Z")
            for raw in store.undelivered_alerts(since):
                try:
                    self.submit(Alert(**json.loads(raw)))
                except (TypeError, ValueError):
                    continue
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                try:
                    self._deliver(item)
                    at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                    store.mark_alert_delivered(item.budget, item.period, item.threshold, at)
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("alert delivery failed for %s", item.budget)
        finally:
            store.close()

    def _deliver(self, alert: Alert) -> None:
        desktop_notify("Halton Meter budget", alert.text())
        body = webhook_body(alert, self.machine_id, self.hostname)
        for url in list(self.webhooks):
            for attempt in range(ATTEMPTS):
                status = post_json(url, body)
                if 200 <= status < 300:
                    self.sent += 1
                    break
                retry = status == 0 or status in (408, 425, 429) or status >= 500
                if not retry or attempt == ATTEMPTS - 1:
                    self.failed += 1
                    self.last_error = f"webhook {_safe_url(url)} answered {status or 'nothing'}"
                    log.warning("budget alert for %s not delivered to %s (status %s)", alert.budget,
                                _safe_url(url), status or "unreachable")
                    break
                time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
