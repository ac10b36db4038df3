"""Start a real ``halton-meter-cloud serve`` subprocess for end-to-end tests.

    from tests.support.cloudserver import running_cloud

    with running_cloud(tmp_path) as cloud:            # temp SQLite, free port
        cloud.create_user("a@example.com", "password1", "acme")
        session = cloud.login_session("a@example.com", "password1")
        started = cloud.start_pairing(workspace="acme")   # POST /v1/pairing/start
        cloud.approve(started["user_code"], "acme", session)
        token = cloud.poll(started["device_code"])["token"]
        # ... or all of it at once:
        paired = cloud.pair("a@example.com", "password1", "acme")

``running_cloud(tmp_path, db_url="postgresql+psycopg://…")`` uses another
database. The server listens on a port the kernel picks (``--port 0``) and
is stopped (terminate, then kill) when the block exits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_LISTENING = re.compile(r"listening on (http://\S+)")
_CSRF = re.compile(r'name="csrf-token" content="([0-9a-f]+)"')
START_TIMEOUT = 30.0


def cloud_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hm_cloud", *args]


@dataclass
class CloudServer:
    base_url: str
    app_url: str
    db_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _clients: list[httpx.Client] = field(default_factory=list)
    _api_client: httpx.Client | None = None

    # -- accounts ----------------------------------------------------------

    def create_user(self, email: str, password: str, workspace: str) -> None:
        """``halton-meter-cloud create-user`` against the server's database."""
        done = subprocess.run(
            cloud_command(
                "create-user",
                email,
                "--workspace",
                workspace,
                "--password-stdin",
                "--db",
                self.db_url,
            ),
            input=(password + "\n").encode(),
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"create-user failed: {done.stderr.decode().strip()}")

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on the server, closed when the server stops."""
        c = httpx.Client(base_url=self.base_url, timeout=30.0, **kwargs)
        self._clients.append(c)
        return c

    def _api(self) -> httpx.Client:
        """One shared, thread-safe client for the daemon-side calls (start, poll)."""
        if self._api_client is None:
            self._api_client = self.client(limits=httpx.Limits(max_connections=500))
        return self._api_client

    def login_session(self, email: str, password: str) -> httpx.Client:
        """A client signed in through the /login form (session cookie set)."""
        session = self.client()
        csrf = self.csrf(session, "/login")
        answer = session.post(
            "/login", data={"email": email, "password": password, "csrf_token": csrf}
        )
        if answer.status_code != 303:
            raise RuntimeError(f"login as {email} failed with {answer.status_code}")
        return session

    @staticmethod
    def csrf(session: httpx.Client, path: str = "/connect") -> str:
        """The CSRF token of ``session`` (every page carries it in a meta tag)."""
        page = session.get(path)
        found = _CSRF.search(page.text)
        if not found:
            raise RuntimeError(f"no CSRF token on {path} ({page.status_code})")
        return found.group(1)

    # -- pairing -------------------------------------------------------------

    def start_pairing(
        self,
        machine_id: str | None = None,
        hostname: str = "test-host.local",
        workspace: str | None = None,
        os_name: str = "linux",
        agent_version: str = "0.2.1",
    ) -> dict[str, Any]:
        body = {
            "machine_id": machine_id or str(uuid.uuid4()),
            "hostname": hostname,
            "os": os_name,
            "agent_version": agent_version,
            "workspace": workspace,
        }
        answer = self._api().post("/v1/pairing/start", json=body)
        answer.raise_for_status()
        started: dict[str, Any] = answer.json()
        started["machine_id"] = body["machine_id"]
        return started

    def approve(
        self, user_code: str, workspace: str, session: httpx.Client, decision: str = "approve"
    ) -> httpx.Response:
        """Scripted approval: what the /connect form posts, as JSON with the CSRF header."""
        return session.post(
            "/v1/pairing/approve",
            json={"user_code": user_code, "workspace": workspace, "decision": decision},
            headers={"X-CSRF-Token": self.csrf(session)},
        )

    def poll(self, device_code: str, wait: float = 5.0) -> dict[str, Any]:
        answer = self._api().post(
            "/v1/pairing/poll", json={"device_code": device_code, "wait": wait}
        )
        body: dict[str, Any] = answer.json()
        body["status_code"] = answer.status_code
        return body

    def pair(
        self,
        email: str,
        password: str,
        workspace: str,
        machine_id: str | None = None,
        hostname: str = "test-host.local",
    ) -> dict[str, Any]:
        """Start, approve and collect: the poll answer (token, workspace_*, machine_id)."""
        session = self.login_session(email, password)
        started = self.start_pairing(machine_id=machine_id, hostname=hostname, workspace=workspace)
        approved = self.approve(started["user_code"], workspace, session)
        if approved.status_code != 200:
            raise RuntimeError(f"approve failed: {approved.status_code} {approved.text}")
        return self.poll(started["device_code"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def running_cloud(
    tmp_path: Path,
    db_url: str | None = None,
    app_url: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[CloudServer]:
    """A live backend on 127.0.0.1 (temp SQLite file unless ``db_url``)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    db_url = db_url or f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    out_path = tmp_path / f"cloud-{uuid.uuid4().hex[:8]}.out"
    log_path = out_path.with_suffix(".log")
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--db", db_url, *extra_args]
    if app_url:
        args += ["--app-url", app_url]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out_path, "wb") as out, open(log_path, "wb") as err:
        process = subprocess.Popen(cloud_command(*args), stdout=out, stderr=err, env=env)
    server: CloudServer | None = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            found = _LISTENING.search(out_path.read_text(errors="replace"))
            if found:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"halton-meter-cloud did not start (exit {process.poll()}): {log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        base_url = found.group(1)
        server = CloudServer(
            base_url=base_url,
            app_url=(app_url or base_url).rstrip("/"),
            db_url=db_url,
            process=process,
            log_path=log_path,
        )
        yield server
    finally:
        if server is not None:
            server.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(10)


def sample_row(**overrides: Any) -> dict[str, Any]:
    """One valid api.md usage Row (a fresh id each call); override any field."""
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "ts": "2026-11-24T10:00:00.000Z",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "stream": False,
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_tokens": None,
        "cache_write_tokens": None,
        "reasoning_tokens": None,
        "cost_usd": "0.0015",
        "price_version": "0.0.61",
        "latency_ms": 420,
        "ttfb_ms": 180,
    }
    row.update(overrides)
    return row


def batch_body(rows: list[dict[str, Any]], batch_id: str | None = None) -> dict[str, Any]:
    return {"batch_id": batch_id or str(uuid.uuid4()), "rows": rows}
