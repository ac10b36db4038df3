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
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .home import HomePaths, paths

CommandHandler = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]

COMMANDS: dict[str, CommandHandler] = {}
# A request is one short JSON line ({"cmd": ..., "args": {...}}): anything
# longer or nested deeper is refused with an error reply before it is parsed
# (json.loads recurses: 100,000 "[" raised RecursionError in the daemon).
MAX_REQUEST_LINE = 64 * 1024
MAX_REQUEST_DEPTH = 32
# The daemon's answers (status, cloud sync) are larger; the client reads at most this.
MAX_REPLY_LINE = 1 << 20
# Connections served at once; more wait in the listen backlog.
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_S = 10.0


class DaemonNotRunning(Exception):
    """No daemon answers on this home's control socket."""


class ControlError(Exception):
    """The daemon answered with an error, or did not answer in time."""


class DaemonStopped(ControlError):
    """The daemon closed the connection without answering: it stopped (or crashed) meanwhile."""


class CommandRefused(RuntimeError):
    """A command handler's ordinary "no" the user acts on (not paired, paused, unreachable…).

    Logged as one INFO line; any other exception is a bug and is logged with its traceback.
    """


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


class UntrustedSocket(ControlError):
    """The control socket, or its directory, belongs to someone else: nothing is sent to it."""


def _untrusted(sock_path: Path, why: str) -> UntrustedSocket:
    return UntrustedSocket(
        f"refusing to talk to {sock_path}: {why}; another user may be impersonating the daemon. "
        f"Nothing was sent. Remove it if it is not yours, or set HALTON_METER_HOME to a shorter path."
    )


def _check_socket(hp: HomePaths, sock_path: Path) -> None:
    """Before connecting: the socket is ours, in a directory only we can change."""
    import os
    import stat

    from .home import private_dir_problem

    if sock_path.parent != hp.home:  # the fallback directory (a long home path)
        problem = private_dir_problem(sock_path.parent)
        if problem == "does not exist":
            raise _not_running(hp)
        if problem is not None:
            raise _untrusted(sock_path, f"its directory {problem}")
    try:
        st = os.lstat(sock_path)
    except FileNotFoundError:
        raise _not_running(hp) from None
    except OSError:
        return  # connect() says what is wrong
    if not stat.S_ISSOCK(st.st_mode):
        raise _untrusted(sock_path, "it is not a socket")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise _untrusted(sock_path, f"it is owned by uid {st.st_uid}, not by you")


def _check_peer(sock: socket.socket, sock_path: Path) -> None:
    """After connecting (Linux): the process that listens runs as us."""
    import os
    import struct

    if not hasattr(socket, "SO_PEERCRED") or not hasattr(os, "getuid"):
        return
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return
    if uid != os.getuid():
        raise _untrusted(sock_path, f"the process listening on it runs as uid {uid}, not as you")


def control_call(home: Path | HomePaths | None, cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon and return its result.

    Raises DaemonNotRunning when nothing listens, ControlError when the
    daemon reports an error or does not answer within ``timeout`` seconds.
    """
    hp = home if isinstance(home, HomePaths) else paths(home)
    sock_path = hp.control_socket
    _check_socket(hp, sock_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(sock_path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise _not_running(hp) from None
        except OSError as exc:
            raise DaemonNotRunning(f"cannot reach the daemon at {sock_path}: {exc}. Try `halton-meter restart`.") from None
        _check_peer(sock, sock_path)
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
            if len(buf) > MAX_REPLY_LINE:
                raise ControlError("the daemon's answer is too long")
    finally:
        sock.close()
    if not buf:
        raise DaemonStopped(
            f"the daemon stopped before answering (see {hp.log}). "
            f"Start it with `halton-meter start`, then run the command again."
        )
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"the daemon's answer to `{cmd}` is not JSON; see {hp.log}") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or f"`{cmd}` failed"))
    result = reply.get("result")
    return result if isinstance(result, dict) else {}


async def serve_forever(listener: Any, ctx: Any) -> None:
    """Serve the control socket until cancelled, at most MAX_CONNECTIONS at a time.

    A slot is taken before accepting, so a client that opens thousands of
    connections holds at most MAX_CONNECTIONS descriptors of ours. A failing
    accept is logged and retried: the control socket never takes the daemon,
    or its proxy, down.
    """
    import anyio

    slots = anyio.Semaphore(MAX_CONNECTIONS)

    async def serve_one(stream: Any) -> None:
        try:
            await serve_connection(stream, ctx)
        finally:
            slots.release()

    async with anyio.create_task_group() as tg:
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except Exception:
                slots.release()
                logging.getLogger("hm_agent.control").exception("control socket: accept failed; retrying")
                await anyio.sleep(0.5)
                continue
            tg.start_soon(serve_one, stream)


async def serve_connection(stream: Any, ctx: Any) -> None:
    """Answer one request line on an anyio byte stream (the daemon's side).

    Never raises (except cancellation): whatever a client sends, the worst it
    gets is an error reply, and the daemon and its proxy go on.
    """
    import anyio

    try:
        async with stream:
            reply = await _read_and_dispatch(stream, ctx)
            if reply is None:
                return
            try:
                data = json.dumps(reply, default=str).encode() + b"\n"
            except (ValueError, TypeError, RecursionError) as exc:
                data = json.dumps({"ok": False, "error": f"the answer could not be encoded: {exc}"}).encode() + b"\n"
            try:
                with anyio.fail_after(REQUEST_TIMEOUT_S):
                    await stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
                pass
    except Exception:
        logging.getLogger("hm_agent.control").exception("control connection failed")
    if getattr(ctx, "stop_requested", False):
        ctx.request_stop()


async def _read_and_dispatch(stream: Any, ctx: Any) -> dict[str, Any] | None:
    import anyio

    buf = bytearray()
    try:
        with anyio.fail_after(REQUEST_TIMEOUT_S):
            while b"\n" not in buf:
                buf += await stream.receive(65536)
                if len(buf) > MAX_REQUEST_LINE and b"\n" not in buf:
                    return _error(f"request longer than {MAX_REQUEST_LINE} bytes")
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
        return None
    line = bytes(buf.split(b"\n", 1)[0])
    if len(line) > MAX_REQUEST_LINE:
        return _error(f"request longer than {MAX_REQUEST_LINE} bytes")
    return await dispatch(line, ctx)


def seconds_arg(args: dict[str, Any], name: str, default: float, most: float) -> float:
    """A duration argument of a command, as a number of seconds in 0..``most`` (else ``default``).

    A client that asks to wait forever (``inf``, ``nan``, ``1e308``) would hold
    one of the MAX_CONNECTIONS slots for good.
    """
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
        return default
    return float(value)


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def json_depth_ok(data: bytes, max_depth: int) -> bool:
    """False if ``data`` nests arrays/objects deeper than ``max_depth`` (strings are skipped)."""
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


_BAD_REQUEST = 'bad request: expected {"cmd": ..., "args": {...}}'


async def dispatch(line: bytes, ctx: Any) -> dict[str, Any]:
    """One request line in, one reply out; never raises."""
    if len(line) > MAX_REQUEST_LINE:
        return _error(f"request longer than {MAX_REQUEST_LINE} bytes")
    if not json_depth_ok(line, MAX_REQUEST_DEPTH):
        return _error(f"{_BAD_REQUEST} (nested deeper than {MAX_REQUEST_DEPTH})")
    try:
        request = json.loads(line)
        name = str(request["cmd"])
        args = request.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError
    except Exception:  # ValueError, KeyError, TypeError, AttributeError, RecursionError…
        return _error(_BAD_REQUEST)
    handler = COMMANDS.get(name)
    if handler is None:
        known = ", ".join(sorted(COMMANDS))
        return _error(f"unknown command {name[:80]!r} (this daemon knows: {known}); is it an older version? Try `halton-meter restart`.")
    try:
        return {"ok": True, "result": await handler(ctx, args)}
    except CommandRefused as exc:
        logging.getLogger("hm_agent.control").info("control command %s refused: %s", name, exc)
        return _error(f"{name} failed: {exc}")
    except Exception as exc:
        logging.getLogger("hm_agent.control").exception("control command %s failed", name)
        return _error(f"{name} failed: {exc}")
