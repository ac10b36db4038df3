"""The ``halton-meter-cloud`` command: ``serve``, ``create-user``, ``rewrap-keys`` and ``rollups``.

Every failure the operator can fix ends in one line on stderr that says
what to do, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import re
import socket
import sys
import time
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .db import DatabaseUrlError, default_db_url, init_schema, make_engine

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


class CliError(Exception):
    """A failure to report as one line."""


def _display_url(db_url: str) -> str:
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a bad URL is shown as typed
        return db_url


def open_database(db_url: str) -> Engine:
    try:
        engine = make_engine(db_url)
        init_schema(engine)
    except DatabaseUrlError as exc:
        raise CliError(str(exc)) from exc
    except SQLAlchemyError as exc:
        first = (
            str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            if str(exc)
            else type(exc).__name__
        )
        raise CliError(
            f"cannot open database {_display_url(db_url)}: {first} — check --db and that the server is running"
        ) from exc
    return engine


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets
    # only when the listening socket says TCP; without it every kept-alive
    # response stalls 40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"port {port} on {host} is already in use: stop the other server or pick another with --port"
            ) from exc
        raise CliError(
            f"cannot listen on {host}:{port}: {exc.strerror} — check --host and --port"
        ) from exc
    return sock


ENV_DB = "HALTON_METER_CLOUD_DB"
ENV_APP_URL = "HALTON_METER_CLOUD_APP_URL"
MAX_WORKERS = 64


def _proxy_settings(value: str | None) -> dict[str, object]:
    """uvicorn's settings for ``--forwarded-allow-ips``: trust no proxy unless told.

    Without the flag X-Forwarded-For and X-Forwarded-Proto are ignored, so a
    client cannot pick the address its limits count against. With it, the
    address comes from X-Forwarded-For when the connection is from one of the
    listed proxies (comma-separated IPs or networks, ``*`` for any).
    """
    if not value:
        return {"proxy_headers": False}
    parts = [p.strip() for p in value.split(",") if p.strip()]
    for part in parts:
        if part != "*" and not re.fullmatch(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?", part):
            raise CliError(
                f"--forwarded-allow-ips: {part!r} is not an IP address or network: "
                "list your reverse proxy's addresses, e.g. 127.0.0.1,10.0.0.0/8"
            )
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(parts)}


def serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from .app import create_app

    if not 0 <= args.port < 65536:
        raise CliError(f"--port {args.port} is not a TCP port: use 1-65535 (0 picks a free one)")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise CliError(f"--workers {args.workers}: use 1-{MAX_WORKERS} (about one per CPU core)")
    proxy = _proxy_settings(args.forwarded_allow_ips)
    from .retention import AUDIT_DAYS_ENV, RetentionError, parse_audit_days, start_scheduler
    from .store import start_checkpointer

    if args.audit_days is not None:
        try:
            kept = parse_audit_days(args.audit_days)
        except RetentionError as exc:
            raise CliError(str(exc)) from None
        os.environ[AUDIT_DAYS_ENV] = str(kept or 0)  # the scheduler, and every worker's pages
    engine = open_database(args.db)  # creates or upgrades the schema once, before any worker
    sock = _listen(args.host, args.port)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    base_url = f"http://{shown_host}:{bound_port}"
    app_url = (args.app_url or base_url).rstrip("/")
    common: dict[str, object] = {
        "log_level": args.log_level,
        "access_log": args.access_log,
        "timeout_graceful_shutdown": 2,
        "lifespan": "off",
        **proxy,
    }
    workers = f", {args.workers} workers" if args.workers > 1 else ""
    banner = (
        f"Halton Meter Cloud listening on {base_url} (pages at {app_url}, "
        f"database {_display_url(args.db)}{workers})"
    )
    if args.workers == 1:
        from .app import tune_process

        tune_process()
        app = create_app(engine, app_url)
        server = uvicorn.Server(uvicorn.Config(app, **common))  # type: ignore[arg-type]
        print(banner, flush=True)
        # The retention job: one pass at a time across every server sharing the database.
        stop_retention = start_scheduler(engine)
        stop_checkpoints = start_checkpointer(engine)
        try:
            server.run(sockets=[sock])
        finally:
            stop_retention()
            stop_checkpoints()
            sock.close()
            engine.dispose()
        return 0
    # Several processes accept on the one socket; each builds its app from the
    # environment (app_from_environment). A worker that dies is started again.
    from uvicorn.supervisors import Multiprocess

    engine.dispose()
    os.environ[ENV_DB] = args.db
    os.environ[ENV_APP_URL] = app_url
    config = uvicorn.Config(
        "hm_cloud.app:app_from_environment", factory=True, workers=args.workers, **common  # type: ignore[arg-type]
    )
    print(banner, flush=True)
    stop_retention = start_scheduler(engine)  # the supervisor's: one job for all its workers
    stop_checkpoints = start_checkpointer(engine)  # likewise: one for the SQLite file
    try:
        Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock]).run()
    finally:
        stop_retention()
        stop_checkpoints()
        sock.close()
    return 0


_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,39}")  # fullmatch: "$" accepts a trailing newline


def create_user(args: argparse.Namespace) -> int:
    from . import store
    from .pages import RESERVED_SLUGS
    from .security import hash_password

    if not args.password_stdin:
        raise CliError("pass the password on standard input with --password-stdin")
    if not _SLUG_RE.fullmatch(args.workspace) or args.workspace in RESERVED_SLUGS:
        raise CliError(
            f"workspace slug {args.workspace!r} is not valid: use 2-40 lowercase letters, digits and dashes"
        )
    if "@" not in args.email:
        raise CliError(f"{args.email!r} is not an email address")
    password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise CliError("the password on standard input must be at least 8 characters")
    engine = open_database(args.db)
    try:
        existing = store.find_user(engine, args.email)
        name = args.workspace_name or args.workspace
        if existing is not None:
            ws = store.add_membership(engine, existing[0], args.workspace, name, time.time())
            print(
                f"{args.email.lower()} already exists; added to workspace {ws.slug} (password unchanged)"
            )
            return 0
        _uid, ws = store.create_user(
            engine,
            args.email,
            hash_password(password),
            args.workspace,
            name,
            time.time(),
            join_existing_workspace=True,
        )
        print(f"created {args.email.lower()} in workspace {ws.slug}")
    finally:
        engine.dispose()
    return 0


def rewrap_keys(args: argparse.Namespace) -> int:
    from .request_bodies import NoMasterKey
    from .request_bodies import rewrap_keys as rewrap

    engine = open_database(args.db)
    try:
        print(f"re-wrapped {rewrap(engine)} workspace keys under the first key of HALTON_METER_CLOUD_MASTER_KEY")
    except NoMasterKey as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()
    return 0


def rollups_command(args: argparse.Namespace) -> int:
    """``rollups --check`` compares each workspace's rollups with a fresh aggregate of its
    rows (exit 1 if any differ); ``--rebuild`` recomputes them from the rows."""
    import json

    from sqlalchemy import func, select

    from . import rollups
    from .db import usage_rollups, workspaces
    from .store import write_transaction

    engine = open_database(args.db)
    try:
        with engine.connect() as conn:
            query = select(workspaces.c.id, workspaces.c.slug).order_by(workspaces.c.slug)
            if args.workspace:
                query = query.where(workspaces.c.slug == args.workspace)
            found = conn.execute(query).all()
        if args.workspace and not found:
            raise CliError(f"no workspace {args.workspace!r} in {_display_url(args.db)}: check the slug")
        report = []
        for n, (ws_id, slug) in enumerate(found, 1):
            if not args.json:
                what = "rebuilding" if args.rebuild else "checking"
                print(f"{what} {slug} ({n}/{len(found)}) …", file=sys.stderr, flush=True)
            started = time.perf_counter()
            if args.rebuild:
                with write_transaction(engine) as conn:
                    kept = rollups.rebuild(conn, ws_id)
                differ = 0
            else:
                with engine.connect() as conn:
                    differ = len(rollups.mismatches(conn, ws_id))
                    kept = int(conn.execute(select(func.count()).select_from(usage_rollups)
                                            .where(usage_rollups.c.workspace_id == ws_id)).scalar_one())
            report.append({"workspace": slug, "rollup_rows": kept, "differ": differ,
                           "rebuilt": bool(args.rebuild), "seconds": round(time.perf_counter() - started, 3)})
    finally:
        engine.dispose()
    exact = all(r["differ"] == 0 for r in report)
    if args.json:
        print(json.dumps({"workspaces": report, "exact": exact}))
    else:
        for r in report:
            state = "rebuilt" if r["rebuilt"] else ("exact" if r["differ"] == 0 else f"{r['differ']} rows differ")
            print(f"{r['workspace']}: {r['rollup_rows']:,} rollup rows, {state} ({r['seconds']:.2f} s)")
        if not exact:
            print("rollups differ from the rows: run 'halton-meter-cloud rollups --rebuild' with the same --db",
                  file=sys.stderr)
    return 0 if exact else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halton-meter-cloud", description="The self-hostable Halton Meter Cloud backend."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="serve the cloud API and pages")
    p_serve.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1)"
    )
    p_serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (default 8787; 0 = any free port)"
    )
    p_serve.add_argument(
        "--db", default=None, help="sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
    )
    p_serve.add_argument(
        "--app-url", default=None, help="public URL of the pages (default: the listen URL)"
    )
    p_serve.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    p_serve.add_argument("--access-log", action="store_true", help="log every request")
    p_serve.add_argument(
        "--workers", type=int, default=1,
        help="server processes sharing the port and the database (default 1; use PostgreSQL for more)",
    )
    p_serve.add_argument(
        "--forwarded-allow-ips", default=None, metavar="IPS",
        help="reverse proxies trusted for X-Forwarded-For/-Proto (comma-separated; default none)",
    )
    p_serve.add_argument(
        "--audit-days", default=None, metavar="DAYS",
        help="keep audit log entries this many days (30-36500; 0 = for ever; default 400)",
    )
    p_serve.set_defaults(handler=serve)

    p_user = sub.add_parser(
        "create-user", help="create an account (and its workspace) from a script"
    )
    p_user.add_argument("email")
    p_user.add_argument("--workspace", required=True, help="workspace slug to create or join")
    p_user.add_argument("--workspace-name", default=None, help="display name of a new workspace")
    p_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    p_user.add_argument("--db", default=None, help="same as for serve")
    p_user.set_defaults(handler=create_user)

    p_rewrap = sub.add_parser(
        "rewrap-keys", help="re-wrap every workspace's body key under the newest master key (rotation)"
    )
    p_rewrap.add_argument("--db", default=None, help="same as for serve")
    p_rewrap.set_defaults(handler=rewrap_keys)

    p_rollups = sub.add_parser(
        "rollups", help="check the per-day rollups against the rows, or rebuild them from the rows"
    )
    action = p_rollups.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="compare with a fresh aggregate (exit 1 if any differ)")
    action.add_argument("--rebuild", action="store_true", help="recompute them from the rows")
    p_rollups.add_argument("--workspace", default=None, metavar="SLUG", help="one workspace (default: all)")
    p_rollups.add_argument("--json", action="store_true", help="print the result as JSON")
    p_rollups.add_argument("--db", default=None, help="same as for serve")
    p_rollups.set_defaults(handler=rollups_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "db", None) is None:
        args.db = default_db_url()
    try:
        return int(args.handler(args))
    except CliError as exc:
        print(f"halton-meter-cloud: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
