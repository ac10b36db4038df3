"""Hostile inputs against the real daemon (issue 10, items 12-17): each test failed before its fix.

One daemon per backend for the module, a local TLS server as the "LLM API".
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.daemon import Daemon, capture_host_config, running_daemon
from tests.support.tls import CertAuthority, LocalTLSServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def daemon(request: pytest.FixtureRequest, ca: CertAuthority, upstream: LocalTLSServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp(f"hard-{request.param}")
    extra = capture_host_config([f"localhost:{upstream.port}"])
    with running_daemon(home, request.param, upstream_ca=ca.ca_path, extra_config=extra) as d:
        yield d


def chat(d: Daemon, upstream: LocalTLSServer, model: str = "gpt-4o-mini") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    ctx = ssl.create_default_context(cafile=str(d.ca_cert_path))
    with httpx.Client(proxy=d.proxy_url, verify=ctx, timeout=20) as client:
        return client.post(f"{upstream.url}/v1/chat/completions", json=body)


def raw_control(d: Daemon, line: bytes, timeout: float = 15.0) -> dict[str, Any]:
    """Send raw bytes on the control socket and read the one-line reply."""
    from hm_agent.home import paths

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(paths(d.home).control_socket))
        try:
            s.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and closed before reading all of it
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)  # type: ignore[no-any-return]


# -- item 14: the control socket ------------------------------------------------------


@pytest.mark.parametrize("line", [
    pytest.param(b"[" * 100_000 + b"\n", id="deep-array"),
    pytest.param(b'{"cmd": "ping", "args": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}\n", id="deep-args"),
    pytest.param(b'{"cmd": "ping", "args": {"x": "' + b"y" * 200_000 + b'"}}\n', id="too-long"),
    pytest.param(b"\xff\xfe\x00garbage\n", id="not-utf8"),
    pytest.param(b'{"cmd": ["ping"], "args": []}\n', id="wrong-types"),
])
def test_control_socket_answers_hostile_lines_and_the_proxy_survives(
        daemon: Daemon, upstream: LocalTLSServer, line: bytes) -> None:
    reply = raw_control(daemon, line)
    assert reply["ok"] is False and reply["error"]
    from hm_agent.control import control_call

    assert control_call(daemon.home, "ping")["pid"] == daemon.pid
    assert chat(daemon, upstream).status_code == 200


@pytest.mark.anyio
async def test_a_failing_command_answers_only_its_caller(tmp_path: Any) -> None:
    """A handler that raises, or returns what JSON cannot encode: an error reply, and the server goes on."""
    import anyio

    from hm_agent.control import (
        COMMANDS,
        ControlError,
        control_call,
        register_command,
        serve_forever,
    )
    from hm_agent.home import paths

    async def boom(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        raise RecursionError("maximum recursion depth exceeded")

    async def circular(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        return loop

    async def fine(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        return {"fine": True}

    for name, handler in (("test.boom", boom), ("test.circular", circular), ("test.fine", fine)):
        register_command(name, handler)
    sock_path = paths(tmp_path).control_socket
    try:
        listener = await anyio.create_unix_listener(sock_path)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(serve_forever, listener, None)
            for name, expected in (("test.boom", "test.boom failed"), ("test.circular", "could not be encoded")):
                with pytest.raises(ControlError, match=expected):
                    await anyio.to_thread.run_sync(lambda n=name: control_call(tmp_path, n, timeout=5))
            assert await anyio.to_thread.run_sync(lambda: control_call(tmp_path, "test.fine", timeout=5)) == {"fine": True}
            tg.cancel_scope.cancel()
    finally:
        for name in ("test.boom", "test.circular", "test.fine"):
            COMMANDS.pop(name, None)
