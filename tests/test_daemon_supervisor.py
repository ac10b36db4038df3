"""The supervisor's component plug-in point and the control channel, in-process on both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from hm_agent.control import (
    COMMANDS,
    ControlError,
    DaemonNotRunning,
    control_call,
    dispatch,
    register_command,
)
from hm_agent.supervisor import Supervisor


class FakeCtx:
    def __init__(self, home: Path) -> None:
        self.home = type("HP", (), {"home": home})()
        self.config = type("Cfg", (), {"cloud_enabled": False})()
        self.reloads = 0

    def reload_config_if_changed(self) -> None:
        self.reloads += 1


class Worker:
    name = "cloud"

    def __init__(self, crash_first: bool = False) -> None:
        self.runs = 0
        self.cancelled = 0
        self.crash_first = crash_first

    def should_run(self, config: Any, home: Path) -> bool:
        return bool(config.cloud_enabled)

    async def run(self, ctx: Any) -> None:
        self.runs += 1
        if self.crash_first and self.runs == 1:
            raise RuntimeError("boom")
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise

    def health(self) -> dict[str, Any]:
        return {"state": "ACTIVE", "runs": self.runs}


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_component_starts_and_stops_with_config(tmp_path: Path) -> None:
    worker = Worker()
    sup = Supervisor([worker], tick=60)  # a long tick: only wake() makes it act
    ctx = FakeCtx(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run, ctx)
        await wait_for(lambda: sup.ticks == 1)
        assert sup.health()["cloud"]["state"] == "stopped" and worker.runs == 0
        ctx.config.cloud_enabled = True
        sup.wake()
        await wait_for(lambda: sup.health()["cloud"]["state"] == "running")
        assert sup.health()["cloud"]["detail"] == {"state": "ACTIVE", "runs": 1}
        ctx.config.cloud_enabled = False
        sup.wake()
        await wait_for(lambda: sup.health()["cloud"]["state"] == "stopped")
        assert worker.cancelled == 1
        assert "detail" not in sup.health()["cloud"], "a stopped component's view is stale"
        tg.cancel_scope.cancel()
    assert ctx.reloads >= 3


@pytest.mark.anyio
async def test_crashed_component_is_restarted_and_reported(tmp_path: Path) -> None:
    worker = Worker(crash_first=True)
    sup = Supervisor([worker], tick=0.05)
    ctx = FakeCtx(tmp_path)
    ctx.config.cloud_enabled = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run, ctx)
        await wait_for(lambda: worker.runs >= 2 and sup.health()["cloud"]["state"] == "running")
        health = sup.health()["cloud"]
        assert health["restarts"] == 1 and "boom" in (health["error"] or "")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_dispatch_registry() -> None:
    async def echo(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        return {"echo": args}

    register_command("test.echo", echo)
    try:
        assert await dispatch(b'{"cmd": "test.echo", "args": {"a": 1}}', None) == {"ok": True, "result": {"echo": {"a": 1}}}
        bad = await dispatch(b"not json", None)
        assert bad["ok"] is False and "bad request" in bad["error"]
        unknown = await dispatch(b'{"cmd": "nope"}', None)
        assert unknown["ok"] is False and "unknown command" in unknown["error"]
    finally:
        COMMANDS.pop("test.echo")


def test_control_call_without_daemon(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match="halton-meter start"):
        control_call(tmp_path, "status")


def test_control_call_timeout_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from hm_agent.home import paths

    sock_path = paths(tmp_path).control_socket
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen()
    try:
        with pytest.raises(ControlError, match="did not answer"):
            control_call(tmp_path, "status", timeout=0.2)
    finally:
        server.close()


def test_log_lines_and_tracebacks_are_redacted() -> None:
    import logging

    from hm_agent.proxy import REDACT_FILTER, RedactingFormatter

    record = logging.LogRecord("x", logging.ERROR, __file__, 1,
                               "GET /v1?key=AIzaSECRET&x=1 Authorization: Bearer sk-abcdefghijkl", None, None)
    try:
        raise ValueError("x-api-key: sk-ant-SECRETSECRET")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    REDACT_FILTER.filter(record)
    text = RedactingFormatter("%(message)s").format(record)
    assert "AIzaSECRET" not in text and "sk-abcdefghijkl" not in text and "SECRETSECRET" not in text
    assert "[redacted]" in text
