"""The control channel: JSON lines over a Unix socket only the user can open.

Server side: a registry of named commands (``register_command``) served by
the daemon; handlers are ``async def handler(ctx, args) -> dict``. Client
side: :func:`control_call`, a small blocking client with no heavy imports
(``halton-meter status`` uses it and must stay fast).

Wire format, one line each way per connection:
request ``{"cmd": "status", "args": {...}}``; reply ``{"ok": true,
"result": {...}}`` or ``{"ok": false, "error": "one line"}``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .home import HomePaths, paths

CommandHandler = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]

COMMANDS: dict[str, CommandHandler] = {}
MAX_LINE = 1 << 20


class DaemonNotRunning(Exception):
    """No daemon answers on this home's control socket."""


class ControlError(Exception):
    """The daemon answered with an error, or did not answer in time."""


def register_command(name: str, handler: CommandHandler) -> None:
    """Make ``handler`` answer control command ``name`` (e.g. "cloud.sync")."""
    COMMANDS[name] = handler


def command(name: str) -> Callable[[CommandHandler], CommandHandler]:
    """Decorator form of :func:`register_command`."""

    def decorate(handler: CommandHandler) -> CommandHandler:
        register_command(name, handler)
        return handler

    return decorate


def _not_running(hp: HomePaths) -> DaemonNotRunning:
    return DaemonNotRunning(
        f"the halton-meter daemon is not running (home {hp.home}). "
        f"Check with `halton-meter status`; start it with `halton-meter start`."
    )


def control_call(home: Path | HomePaths | None, cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon and return its result.

    Raises DaemonNotRunning when nothing listens, ControlError when the
    daemon reports an error or does not answer within ``timeout`` seconds.
    """
    hp = home if isinstance(home, HomePaths) else paths(home)
    sock_path = hp.control_socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise _not_running(hp) from None
        except OSError as exc:
            raise DaemonNotRunning(f"cannot reach the daemon at {sock_path}: {exc}. Try `halton-meter restart`.") from None
        sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"the daemon did not answer `{cmd}` within {timeout:g}s; see {hp.log}") from None
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_LINE:
                raise ControlError("the daemon's answer is too long")
    finally:
        sock.close()
    if not buf:
        raise ControlError(f"the daemon closed the connection without answering `{cmd}`; see {hp.log}")
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"the daemon's answer to `{cmd}` is not JSON; see {hp.log}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or f"`{cmd}` failed"))
    result = reply.get("result")
    return result if isinstance(result, dict) else {}


async def serve_connection(stream: Any, ctx: Any) -> None:
    """Answer one request line on an anyio byte stream (the daemon's side)."""
    import anyio

    async with stream:
        buf = bytearray()
        try:
            with anyio.fail_after(10):
                while b"\n" not in buf:
                    chunk = await stream.receive(65536)
                    buf += chunk
                    if len(buf) > MAX_LINE:
                        return
        except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError):
            return
        reply = await dispatch(bytes(buf.split(b"\n", 1)[0]), ctx)
        try:
            await stream.send(json.dumps(reply, default=str).encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
    if getattr(ctx, "stop_requested", False):
        ctx.request_stop()


async def dispatch(line: bytes, ctx: Any) -> dict[str, Any]:
    try:
        request = json.loads(line)
        name = str(request["cmd"])
        args = request.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "error": 'bad request: expected {"cmd": ..., "args": {...}}'}
    handler = COMMANDS.get(name)
    if handler is None:
        known = ", ".join(sorted(COMMANDS))
        return {"ok": False, "error": f"unknown command {name!r} (this daemon knows: {known}); is it an older version? Try `halton-meter restart`."}
    try:
        return {"ok": True, "result": await handler(ctx, args)}
    except Exception as exc:
        import logging

        logging.getLogger("hm_agent.control").exception("control command %s failed", name)
        return {"ok": False, "error": f"{name} failed: {exc}"}
