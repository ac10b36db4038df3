"""Every database read and write of the backend, as short synchronous functions.

The web layer runs them in a worker thread (``anyio.to_thread``) so the event
loop never blocks on SQLite or PostgreSQL, and no transaction is ever held
open across an ``await``.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    case,
    cast,
    delete,
    false,
    func,
    literal,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError

from hm_proto.server import UsageRow, hash_token

if sys.platform != "win32":
    import fcntl

from . import rollups
from .db import (
    ATTRIBUTION_COLUMNS,
    devices,
    memberships,
    pairings,
    settings,
    tokens,
    usage_rollups,
    usage_rows,
    users,
    workspaces,
)
from .ingest import cost_nanos as _cost_nanos

NANOS = Decimal(1_000_000_000)
_ROW_COLUMNS = [c.name for c in usage_rows.columns]
assert _ROW_COLUMNS[:3] == ["workspace_id", "id", "machine_id"] and _ROW_COLUMNS[-7:] == [
    "received_at", *ATTRIBUTION_COLUMNS
]
_SQLITE_INSERT = (
    f"INSERT INTO usage_rows ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)}) ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    slug: str
    name: str
    role: str = ""  # the signed-in person's role in it, where known (owner admin member viewer)


@dataclass(frozen=True, slots=True)
class AuthedDevice:
    """The device a valid bearer token belongs to."""

    device_id: str
    token_hash: str
    workspace: Workspace
    machine_id: str
    hostname: str


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE).

    A deferred transaction that reads and then writes can fail at once with
    SQLITE_BUSY when another writer committed in between; IMMEDIATE waits for
    the lock (busy_timeout) instead. PostgreSQL needs nothing special.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


class _WriterTurn:
    """One SQLite database's queue of ingest writers: a thread lock for this process
    and ``flock`` on a file beside the database for the other server processes."""

    def __init__(self, path: str) -> None:
        self.path = f"{path}-ingest.lock"
        self.lock = threading.Lock()
        self.slot = threading.Lock()  # sqlite_batch_slot
        self.fd: int | None = None
        self.pid = 0

    def _file(self) -> int | None:
        if self.pid != os.getpid():  # opened afresh in each process (a forked fd shares its lock)
            self.pid, self.fd = os.getpid(), None
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                self.fd = None  # a read-only folder: SQLite's own busy wait still serializes
        return self.fd

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self.lock:
            fd = self._file()
            if fd is None or sys.platform == "win32":  # no flock: the thread lock alone
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


_turns: dict[str, _WriterTurn] = {}
_turns_guard = threading.Lock()


def _turn_of(engine: Engine) -> _WriterTurn:
    path = str(engine.url.database)
    with _turns_guard:
        turn = _turns.get(path)
        if turn is None:
            turn = _turns[path] = _WriterTurn(path)
    return turn


def _is_sqlite_file(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and bool(engine.url.database)


@contextmanager
def sqlite_writer_turn(engine: Engine) -> Iterator[None]:
    """Wait for this batch's turn to write a SQLite file, in arrival order.

    Without it, concurrent batches all reach BEGIN IMMEDIATE and the losers sleep
    in SQLite's busy handler (1, 2, 5 … 100 ms between tries), so the database sits
    idle while they sleep and batch latency jumps; a lock wakes the next writer the
    moment the last one commits. Other SQLite writers (pages, pairing, retention)
    keep SQLite's busy wait, which still serializes them with these. Nothing for
    PostgreSQL (row locks).
    """
    if not _is_sqlite_file(engine):
        yield
        return
    with _turn_of(engine).turn():
        yield


@contextmanager
def sqlite_batch_slot(engine: Engine) -> Iterator[None]:
    """SQLite: one batch at a time in this process, from decoding to commit.

    The write lock lets one batch in at a time anyway; batches decoding in the same
    process meanwhile only take the GIL and the CPU from the one that holds it
    (measured: its insert took twice as long with four uploaders as with one). With
    ``--workers 2`` one process decodes while the other writes. Nothing for PostgreSQL,
    whose batches write in parallel.
    """
    if not _is_sqlite_file(engine):
        yield
        return
    with _turn_of(engine).slot:
        yield


CHECKPOINT_EVERY_S = 0.25


def start_checkpointer(engine: Engine, every: float = CHECKPOINT_EVERY_S) -> Callable[[], None]:
    """SQLite: copy the WAL into the database file from a thread of its own, every
    ``every`` seconds (``PRAGMA wal_checkpoint(PASSIVE)``: it waits for no writer and
    no writer waits for it); returns what stops it. Nothing for PostgreSQL.

    Left to SQLite, the commit that takes the WAL past its threshold does the
    checkpoint (page copies and fsyncs) inside that writer's transaction, holding
    the only write lock: a bare insert loop ran at 21,000-23,000 rows/s with it and
    32,000-50,000 without. ``serve`` starts one per server (the supervisor's, with
    ``--workers N``); a writer still checkpoints inline past db.WAL_AUTOCHECKPOINT_PAGES,
    so the WAL stays bounded if this thread falls behind or is not running.
    """
    if not _is_sqlite_file(engine):
        return lambda: None

    def loop(stop: threading.Event) -> None:
        while not stop.wait(every):
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
            except Exception:  # noqa: BLE001 - a busy or vanished database: try again next time
                continue

    return background("hm-cloud-checkpoint", loop)


def background(name: str, loop: Callable[[threading.Event], None]) -> Callable[[], None]:
    """Run ``loop(stop)`` in a daemon thread named ``name``; returns what stops it (sets
    ``stop`` and waits up to 5 s for the thread)."""
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(stop,), name=name, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=5)

    return stopper


def lock_row(conn: Connection, table: Any, row_id: object) -> None:
    """Hold ``table``'s row ``row_id`` until the transaction ends, so a count-then-insert
    limit (budgets, keys, invitations, workspaces per person, the last owner) cannot be
    passed by concurrent requests. SQLite: :func:`write_transaction`'s BEGIN IMMEDIATE
    already lets one writer in at a time; PostgreSQL: SELECT … FOR UPDATE."""
    if conn.dialect.name != "sqlite":
        conn.execute(select(table.c.id).where(table.c.id == row_id).with_for_update())


class SignupError(ValueError):
    """Sign-up refused; the message is safe to show the person."""


class PairingRefused(ValueError):
    """An approval the rules refuse (another person's machine); the message says what to do."""


# -- settings ------------------------------------------------------------------


def session_secret(engine: Engine) -> str:
    """The server's session-signing secret, made once and kept in the database."""
    with write_transaction(engine) as conn:
        value = conn.execute(
            select(settings.c.value).where(settings.c.key == "session_secret")
        ).scalar()
        if value is not None:
            return str(value)
        fresh = secrets.token_bytes(32).hex()
        try:
            conn.execute(settings.insert().values(key="session_secret", value=fresh))
        except IntegrityError:  # pragma: no cover - another process won the race
            pass
    with engine.connect() as conn:
        return str(
            conn.execute(
                select(settings.c.value).where(settings.c.key == "session_secret")
            ).scalar_one()
        )


def session_epoch(engine: Engine, user_id: int) -> int:
    """The user's session epoch: cookies signed for an older one are signed out."""
    with engine.connect() as conn:
        value = conn.execute(
            select(settings.c.value).where(settings.c.key == f"session_epoch:{user_id}")
        ).scalar()
    return int(value) if value is not None else 0


def bump_session_epoch(engine: Engine, user_id: int) -> None:
    """Sign the user out everywhere: every cookie issued so far stops working."""
    key = f"session_epoch:{user_id}"
    with write_transaction(engine) as conn:
        value = conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar()
        if value is None:
            conn.execute(settings.insert().values(key=key, value="1"))
        else:
            conn.execute(settings.update().where(settings.c.key == key).values(value=str(int(value) + 1)))


# -- users and workspaces --------------------------------------------------------


def find_user(engine: Engine, email: str) -> tuple[int, str] | None:
    """(user id, password hash) for an email, case-insensitively."""
    with engine.connect() as conn:
        row = conn.execute(
            select(users.c.id, users.c.password_hash).where(users.c.email == email.strip().lower())
        ).first()
    return (int(row[0]), str(row[1])) if row else None


def user_email(engine: Engine, user_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(users.c.email).where(users.c.id == user_id)).scalar()


def create_user(
    engine: Engine,
    email: str,
    password_hash: str,
    workspace_slug: str,
    workspace_name: str,
    now: float,
    join_existing_workspace: bool = False,
) -> tuple[int, Workspace]:
    """A new user and their workspace (or membership of an existing one)."""
    email = email.strip().lower()
    try:
        with write_transaction(engine) as conn:
            if conn.execute(select(users.c.id).where(users.c.email == email)).first():
                raise SignupError(f"an account for {email} already exists: sign in instead")
            ws = conn.execute(
                select(workspaces.c.id, workspaces.c.slug, workspaces.c.name).where(
                    workspaces.c.slug == workspace_slug
                )
            ).first()
            if ws is not None and not join_existing_workspace:
                raise SignupError(f"the workspace name '{workspace_slug}' is taken: choose another")
            inserted = conn.execute(
                users.insert().values(email=email, password_hash=password_hash, created_at=now)
            ).inserted_primary_key
            assert inserted is not None
            user_id = inserted[0]
            if ws is None:
                workspace = Workspace(str(uuid.uuid4()), workspace_slug, workspace_name)
                conn.execute(
                    workspaces.insert().values(
                        id=workspace.id, slug=workspace.slug, name=workspace.name, created_at=now
                    )
                )
                role = "owner"
            else:
                workspace = Workspace(str(ws[0]), str(ws[1]), str(ws[2]))
                role = "member"
            conn.execute(
                memberships.insert().values(user_id=user_id, workspace_id=workspace.id, role=role)
            )
    except IntegrityError:  # PostgreSQL: a concurrent sign-up took the email or slug after the checks
        raise SignupError(f"the email {email} or the workspace name '{workspace_slug}' was just taken: "
                          "sign in, or choose another") from None
    return int(user_id), workspace


def add_membership(
    engine: Engine, user_id: int, workspace_slug: str, workspace_name: str, now: float
) -> Workspace:
    """Put an existing user in a workspace, creating the workspace if needed."""
    with write_transaction(engine) as conn:
        ws = conn.execute(
            select(workspaces.c.id, workspaces.c.slug, workspaces.c.name).where(
                workspaces.c.slug == workspace_slug
            )
        ).first()
        if ws is None:
            workspace = Workspace(str(uuid.uuid4()), workspace_slug, workspace_name)
            conn.execute(
                workspaces.insert().values(
                    id=workspace.id, slug=workspace.slug, name=workspace.name, created_at=now
                )
            )
        else:
            workspace = Workspace(str(ws[0]), str(ws[1]), str(ws[2]))
        exists = conn.execute(
            select(memberships.c.user_id).where(
                memberships.c.user_id == user_id, memberships.c.workspace_id == workspace.id
            )
        ).first()
        if not exists:
            conn.execute(
                memberships.insert().values(
                    user_id=user_id, workspace_id=workspace.id, role="member"
                )
            )
    return workspace


def user_workspaces(engine: Engine, user_id: int) -> list[Workspace]:
    """The user's workspaces by slug, each with the user's role in it."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(workspaces.c.id, workspaces.c.slug, workspaces.c.name, memberships.c.role)
            .join(memberships, memberships.c.workspace_id == workspaces.c.id)
            .where(memberships.c.user_id == user_id)
            .order_by(workspaces.c.slug)
        ).all()
    return [Workspace(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def last_workspace(engine: Engine, user_id: int) -> str | None:
    """The id of the workspace the user opened last (what `/` opens)."""
    with engine.connect() as conn:
        value = conn.execute(select(users.c.last_workspace_id).where(users.c.id == user_id)).scalar()
    return None if value is None else str(value)


def remember_workspace(engine: Engine, user_id: int, workspace_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(users)
            .where(users.c.id == user_id)
            .where(or_(users.c.last_workspace_id.is_(None), users.c.last_workspace_id != workspace_id))
            .values(last_workspace_id=workspace_id)
        )


def member_workspace(engine: Engine, user_id: int, slug: str) -> Workspace | None:
    """The workspace ``slug`` if the user belongs to it, else None (no hint either way)."""
    for ws in user_workspaces(engine, user_id):
        if ws.slug == slug:
            return ws
    return None


# -- pairing -------------------------------------------------------------------


def create_pairing(
    engine: Engine,
    device_code_hash: str,
    user_code: str,
    machine_id: str,
    hostname: str,
    os_name: str,
    agent_version: str,
    workspace_hint: str | None,
    now: float,
    expires_in: int,
    interval: int,
) -> bool:
    """Store a pairing request; False if ``user_code`` collides with a live one."""
    with write_transaction(engine) as conn:
        # Housekeeping: a token nobody collected before its code expired is
        # wiped, and day-old requests are dropped.
        conn.execute(
            update(pairings)
            .where(pairings.c.expires_at <= now, pairings.c.token_plain.is_not(None))
            .values(token_plain=None)
        )
        conn.execute(delete(pairings).where(pairings.c.expires_at <= now - 86400))
        live = conn.execute(
            select(pairings.c.device_code_hash).where(
                pairings.c.user_code == user_code, pairings.c.expires_at > now
            )
        ).first()
        if live:
            return False
        conn.execute(
            pairings.insert().values(
                device_code_hash=device_code_hash,
                user_code=user_code,
                machine_id=machine_id,
                hostname=hostname,
                os=os_name,
                agent_version=agent_version,
                workspace_hint=workspace_hint,
                created_at=now,
                expires_at=now + expires_in,
                status="pending",
                interval=interval,
            )
        )
    return True


def pending_pairing(engine: Engine, user_code: str, now: float) -> dict[str, Any] | None:
    """The live, still-pending pairing request for a user code."""
    with engine.connect() as conn:
        row = conn.execute(
            select(pairings).where(
                pairings.c.user_code == user_code,
                pairings.c.expires_at > now,
                pairings.c.status == "pending",
            )
        ).first()
    return dict(row._mapping) if row else None


def pairing_by_device_code(engine: Engine, device_code_hash: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(pairings).where(pairings.c.device_code_hash == device_code_hash)
        ).first()
    return dict(row._mapping) if row else None


def record_poll(
    engine: Engine, device_code_hash: str, ended: float, held: float, interval: int
) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            update(pairings)
            .where(pairings.c.device_code_hash == device_code_hash)
            .values(last_poll_end=ended, last_poll_held=held, interval=interval)
        )


def approve_pairing(
    engine: Engine, device_code_hash: str, workspace: Workspace, token: str, now: float,
    approved_by: int | None = None, replace_others: bool = True,
) -> bool:
    """Mint the device and its token; False if the request is no longer pending.

    A machine already paired in the workspace keeps its device entry: the entry
    is refreshed and every older token of it is revoked. Without
    ``replace_others`` (a member, who may revoke only their own devices) that
    entry must be one ``approved_by`` approved: machine ids are shown to every
    member, and re-pairing another person's machine id would revoke their
    machine and take over its identity (PairingRefused).
    """
    with write_transaction(engine) as conn:
        req = conn.execute(
            select(pairings).where(
                pairings.c.device_code_hash == device_code_hash,
                pairings.c.status == "pending",
                pairings.c.expires_at > now,
            )
        ).first()
        if req is None:
            return False
        found = conn.execute(
            select(devices.c.id, devices.c.approved_by).where(
                devices.c.workspace_id == workspace.id, devices.c.machine_id == req.machine_id
            )
        ).first()
        existing = None if found is None else found.id
        if found is not None and not replace_others and (approved_by is None or found.approved_by != approved_by):
            raise PairingRefused(
                f"Machine {req.machine_id} is already paired in '{workspace.slug}' by someone else: "
                "they or an owner or admin can approve it (or revoke their device first)."
            )
        values = {
            "hostname": req.hostname,
            "os": req.os,
            "agent_version": req.agent_version,
            "paired_at": now,
            "revoked_at": None,
            "approved_by": approved_by,
        }
        if existing is None:
            device_id = str(uuid.uuid4())
            conn.execute(
                devices.insert().values(
                    id=device_id,
                    workspace_id=workspace.id,
                    machine_id=req.machine_id,
                    rows_synced=0,
                    **values,
                )
            )
        else:
            device_id = str(existing)
            conn.execute(update(devices).where(devices.c.id == device_id).values(**values))
            conn.execute(
                update(tokens)
                .where(tokens.c.device_id == device_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        conn.execute(
            tokens.insert().values(
                token_hash=hash_token(token), device_id=device_id, created_at=now
            )
        )
        done = conn.execute(
            update(pairings)
            .where(pairings.c.device_code_hash == device_code_hash, pairings.c.status == "pending")
            .values(
                status="approved", workspace_id=workspace.id, device_id=device_id, token_plain=token
            )
        )
        if done.rowcount != 1:  # pragma: no cover - lost a race with a deny
            raise IntegrityError("pairing changed under us", None, Exception())
    return True


def deny_pairing(engine: Engine, device_code_hash: str, now: float) -> bool:
    with write_transaction(engine) as conn:
        done = conn.execute(
            update(pairings)
            .where(
                pairings.c.device_code_hash == device_code_hash,
                pairings.c.status == "pending",
                pairings.c.expires_at > now,
            )
            .values(status="denied")
        )
    return done.rowcount == 1


def cancel_pairing(engine: Engine, device_code_hash: str, now: float) -> bool:
    """The machine gave up (Ctrl-C): the code can no longer be approved; False if unknown.

    A token minted for the code is revoked with its device: the machine that
    cancelled does not hold it (it would not have cancelled), so the device
    would show as active and never sync.
    """
    with write_transaction(engine) as conn:
        req = conn.execute(
            select(pairings.c.status, pairings.c.device_id).where(
                pairings.c.device_code_hash == device_code_hash
            )
        ).first()
        if req is None:
            return False
        if req.status in ("approved", "consumed") and req.device_id is not None:
            conn.execute(
                update(tokens)
                .where(tokens.c.device_id == req.device_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            conn.execute(
                update(devices)
                .where(devices.c.id == req.device_id, devices.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        conn.execute(
            update(pairings)
            .where(pairings.c.device_code_hash == device_code_hash)
            .values(status="cancelled", token_plain=None)
        )
    return True


def cancelled_pairing(engine: Engine, user_code: str, now: float) -> bool:
    """True if the live code ``user_code`` was cancelled by its machine (the page says so)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(pairings.c.device_code_hash).where(
                pairings.c.user_code == user_code,
                pairings.c.expires_at > now,
                pairings.c.status == "cancelled",
            )
        ).first()
    return found is not None


def collect_token(engine: Engine, device_code_hash: str) -> tuple[str, Workspace, str] | None:
    """Hand out the minted token exactly once, wiping the stored copy."""
    with write_transaction(engine) as conn:
        req = conn.execute(
            select(pairings.c.token_plain, pairings.c.workspace_id, pairings.c.machine_id).where(
                pairings.c.device_code_hash == device_code_hash, pairings.c.status == "approved"
            )
        ).first()
        if req is None or req.token_plain is None:
            return None
        done = conn.execute(
            update(pairings)
            .where(pairings.c.device_code_hash == device_code_hash, pairings.c.status == "approved")
            .values(status="consumed", token_plain=None)
        )
        if done.rowcount != 1:
            return None
        ws = conn.execute(
            select(workspaces.c.id, workspaces.c.slug, workspaces.c.name).where(
                workspaces.c.id == req.workspace_id
            )
        ).one()
    return str(req.token_plain), Workspace(str(ws[0]), str(ws[1]), str(ws[2])), str(req.machine_id)


# -- tokens --------------------------------------------------------------------


def authenticate(engine: Engine, token_hash: str) -> AuthedDevice | None:
    """The device of a live token (looked up by its hash), else None."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                tokens.c.token_hash,
                devices.c.id,
                devices.c.machine_id,
                devices.c.hostname,
                workspaces.c.id.label("ws_id"),
                workspaces.c.slug,
                workspaces.c.name,
            )
            .join(devices, devices.c.id == tokens.c.device_id)
            .join(workspaces, workspaces.c.id == devices.c.workspace_id)
            .where(tokens.c.token_hash == token_hash, tokens.c.revoked_at.is_(None))
        ).first()
    if row is None:
        return None
    return AuthedDevice(
        device_id=str(row.id),
        token_hash=str(row.token_hash),
        workspace=Workspace(str(row.ws_id), str(row.slug), str(row.name)),
        machine_id=str(row.machine_id),
        hostname=str(row.hostname),
    )


def token_known(engine: Engine, token_hash: str) -> bool:
    """True for any token this server ever minted, revoked or not."""
    with engine.connect() as conn:
        return (
            conn.execute(
                select(tokens.c.token_hash).where(tokens.c.token_hash == token_hash)
            ).first()
            is not None
        )


def revoke_token(engine: Engine, token_hash: str, now: float) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            update(tokens)
            .where(tokens.c.token_hash == token_hash, tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        device_id = conn.execute(
            select(tokens.c.device_id).where(tokens.c.token_hash == token_hash)
        ).scalar()
        live = conn.execute(
            select(func.count())
            .select_from(tokens)
            .where(tokens.c.device_id == device_id, tokens.c.revoked_at.is_(None))
        ).scalar_one()
        if device_id is not None and live == 0:
            conn.execute(
                update(devices)
                .where(devices.c.id == device_id, devices.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )


def revoke_device(engine: Engine, workspace_id: str, device_id: str, now: float) -> bool:
    """Revoke every token of a device of this workspace; False if it is not ours."""
    with write_transaction(engine) as conn:
        found = conn.execute(
            select(devices.c.id).where(
                devices.c.id == device_id, devices.c.workspace_id == workspace_id
            )
        ).first()
        if found is None:
            return False
        conn.execute(
            update(tokens)
            .where(tokens.c.device_id == device_id, tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        conn.execute(
            update(devices)
            .where(devices.c.id == device_id, devices.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return True


def list_devices(engine: Engine, workspace_id: str) -> list[dict[str, Any]]:
    """The workspace's devices, newest first, each with ``owner_email`` (who approved it)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(devices, users.c.email.label("owner_email"))
            .outerjoin(users, users.c.id == devices.c.approved_by)
            .where(devices.c.workspace_id == workspace_id)
            .order_by(devices.c.paired_at.desc())
        ).all()
    return [dict(r._mapping) for r in rows]


def get_device(engine: Engine, workspace_id: str, device_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(devices).where(devices.c.id == device_id, devices.c.workspace_id == workspace_id)
        ).first()
    return dict(row._mapping) if row else None


# -- usage rows ----------------------------------------------------------------


def format_nanos(nanos: int | None) -> str:
    """A decimal-string dollar amount, without exponent or needless zeros."""
    value = (Decimal(nanos or 0) / NANOS).normalize()
    text = f"{value:f}"
    return "0" if text in ("-0", "0") else text


def ingest(
    engine: Engine, device: AuthedDevice, rows: Sequence[UsageRow], now: float
) -> tuple[int, int]:
    """Store validated rows atomically; rows the workspace already holds are duplicates."""
    from .ingest import row_values

    ws_id, machine_id = device.workspace.id, device.machine_id
    return ingest_values(engine, device, [row_values(r, ws_id, machine_id, now) for r in rows], now)


_PG_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS usage_rows_stage "
    "(LIKE usage_rows INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_STAGE_KEY = "usage_rows_stage"
_PG_COPY = f"COPY usage_rows_stage ({', '.join(_ROW_COLUMNS)}) FROM STDIN"
_PG_MOVE = rollups.postgresql_ingest_sql("usage_rows_stage", _ROW_COLUMNS)
_SQLITE_LAST_ROWID = "SELECT coalesce(max(rowid), 0) FROM usage_rows"
_SQLITE_ROLLUP = rollups.sqlite_ingest_sql()
_SQLITE_ROLLUP_VALUES = rollups.sqlite_upsert_values_sql()
# Past this largest rowid SQLite may pick new rowids at random (never in practice:
# 2**63 rows); then the rollups of the workspace are rebuilt from its rows instead.
_SQLITE_ROWID_ROOM = 2**63 - 1 - 10**7
_RETRIED_SQLSTATES = ("40P01", "40001")  # deadlock detected, serialization failure
INGEST_ATTEMPTS = 5


def ingest_values(
    engine: Engine, device: AuthedDevice, values: Sequence[tuple[Any, ...]], now: float
) -> tuple[int, int]:
    """Store a batch of row tuples (``usage_rows`` column order, from hm_cloud.ingest)
    in one transaction, with each database's bulk path, and add the rows it inserted
    to ``usage_rollups`` in the same transaction; (accepted, duplicates).

    SQLite: one ``executemany`` on the driver, its change counter says how many
    rows were new; writers are serialized (BEGIN IMMEDIATE), so the new rows are
    the ones above the largest rowid held before, and the rollup upsert
    aggregates exactly those. PostgreSQL: ``COPY`` into a per-connection
    temporary staging table (emptied at commit), then one statement that moves
    the rows with ``INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`` and
    upserts the aggregate of what it returned: exactly the new rows, also when
    another transaction inserts the same ids at the same time (it waits for
    that one, then skips). Rows go in by id order and rollup rows by key order,
    so two batches sharing either lock them in one order; a deadlock or
    serialization failure all the same rolls the whole batch back and it is
    tried again (``INGEST_ATTEMPTS``).
    """
    if not values:
        return 0, 0
    for attempt in range(1, INGEST_ATTEMPTS + 1):
        try:
            accepted = _ingest_once(engine, device, values, now)
        except Exception as exc:
            if attempt == INGEST_ATTEMPTS or not _retryable(exc):
                raise
            continue
        return accepted, len(values) - accepted
    raise AssertionError("unreachable")


def _retryable(exc: BaseException) -> bool:
    """A PostgreSQL deadlock or serialization failure, raw (psycopg) or wrapped (SQLAlchemy)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "sqlstate", None) in _RETRIED_SQLSTATES


def _ingest_once(engine: Engine, device: AuthedDevice, values: Sequence[tuple[Any, ...]], now: float) -> int:
    made_stage: list[dict[Any, Any]] = []
    # SQLite: the batch's rollup rows, computed before waiting for the write lock
    # (other batches write meanwhile); used when every row turns out new.
    summed = rollups.aggregate_values(values) if engine.dialect.name == "sqlite" else []
    try:
        with sqlite_writer_turn(engine), write_transaction(engine) as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            if conn.dialect.name == "sqlite":
                last = raw.execute(_SQLITE_LAST_ROWID).fetchone()[0]
                before = raw.total_changes
                raw.executemany(_SQLITE_INSERT, values)
                accepted = int(raw.total_changes - before)
                if accepted == len(values):
                    raw.executemany(_SQLITE_ROLLUP_VALUES, summed)
                elif accepted and last <= _SQLITE_ROWID_ROOM:
                    raw.execute(_SQLITE_ROLLUP, (last,))
                elif accepted:
                    rollups.rebuild(conn, device.workspace.id)
            else:
                with raw.cursor() as cur:
                    info = conn.connection.info  # this database connection's (cleared if it breaks)
                    if not info.get(_STAGE_KEY):
                        cur.execute(_PG_STAGE)
                        info[_STAGE_KEY] = True
                        made_stage.append(info)
                    with cur.copy(_PG_COPY) as copy:
                        for v in values:
                            copy.write_row(v)
                    cur.execute(_PG_MOVE, ())  # () so that psycopg reads its %% as %
                    found = cur.fetchone()
                    assert found is not None
                    accepted = int(found[0])
            conn.execute(
                update(devices)
                .where(devices.c.id == device.device_id)
                .values(last_sync_at=now, rows_synced=devices.c.rows_synced + accepted)
            )
    except BaseException:
        for info in made_stage:  # the rollback dropped the staging table made in it
            info.pop(_STAGE_KEY, None)
        raise
    return accepted


# Sums that no legal data can overflow. SQLite's SUM over integers raises
# "integer overflow" past 2**63 (PostgreSQL widens to numeric), so each column
# is summed as two parts, value // SPLIT and value % SPLIT, joined exactly in
# Python. With the api.md bounds (tokens <= 10**12, cost <= 10**15 nano-dollars
# per row) each part is below 10**9 per row: more than 9 * 10**9 rows would
# have to match one query before a part could overflow. The identity
# hi * SPLIT + lo == value also holds for negative values (truncating division
# on both engines), so rows stored before the bounds sum exactly too.
_SPLIT = rollups.SPLIT  # the rollups keep their sums split the same way


def exact_sum(column: Any, label: str) -> list[Any]:
    """The two SQL aggregates of ``column`` that :func:`joined_sum` joins."""
    return [
        func.sum(column // _SPLIT).label(f"{label}_hi"),
        func.sum(column % _SPLIT).label(f"{label}_lo"),
    ]


def joined_sum(row: Any, label: str) -> int:
    """The exact total of an :func:`exact_sum` pair in a result row (0 when no rows)."""
    hi, lo = getattr(row, f"{label}_hi"), getattr(row, f"{label}_lo")
    return int(hi or 0) * _SPLIT + int(lo or 0)


# -- readers: rollups, or the rows themselves -------------------------------------
#
# Every figure the pages and read APIs show is a sum over usage rows. When what
# a reader groups and filters by is among the rollup keys (ROLLUP_DIMENSIONS),
# it sums usage_rollups instead (hm_cloud.rollups): the same exact numbers from
# one row per day, machine, provider, model, project, OS user and priced flag,
# however many calls those were. repo, branch, program and tag:KEY are not kept
# in rollups: a reader grouping or filtering by one of them sums the rows.
# ``raw=True``, and HALTON_METER_CLOUD_ROLLUPS=off for the whole server (a
# diagnostic), sum the rows always: the differential test and bench_dashboard's
# baseline compare the two (docs/cloud.md, "Rollups").

ROLLUPS_ENV = "HALTON_METER_CLOUD_ROLLUPS"
ROLLUP_DIMENSIONS = frozenset(("day", "provider", "model", "machine", "project", "os_user", "member", "person"))
"""Dimensions usage_rollups can group and filter by (member = os_user@machine, person = the machine's owner)."""
_BLANK_IS_NONE = ("project", "os_user")  # '' in usage_rollups, null in usage_rows


def rollups_on() -> bool:
    """False when the server runs with HALTON_METER_CLOUD_ROLLUPS=off (every reader sums the rows)."""
    return os.environ.get(ROLLUPS_ENV, "").strip().lower() not in ("off", "0", "false", "no")


@dataclass(frozen=True, slots=True)
class _Source:
    """What a reader sums: every row (usage_rows) or the per-day rollups, as the same expressions."""

    table: Any
    rollup: bool
    dialect: str

    @property
    def c(self) -> Any:
        return self.table.c

    def calls(self) -> Any:
        return func.sum(self.c.calls) if self.rollup else func.count()

    def total(self, name: str, label: str) -> list[Any]:
        """The exact sum of ``name`` as the pair joined_sum(row, label) reads."""
        if not self.rollup:
            return exact_sum(self.c[name], label)
        return [func.sum(self.c[f"{name}_{part}"]).label(f"{label}_{part}") for part in ("hi", "lo")]

    def outcomes(self) -> tuple[Any, Any, Any]:
        """Counts of errors, rows without usage and rows at an unknown price (_outcome_columns)."""
        if self.rollup:
            return func.sum(self.c.errors), func.sum(self.c.no_usage), func.sum(self.c.unknown)
        return _outcome_columns()

    def unpriced(self) -> Any:
        return self.c.priced.is_(False) if self.rollup else self.c.cost_nanos.is_(None)

    def within(self, workspace_id: str, from_date: str, to_date: str) -> list[Any]:
        return [self.c.workspace_id == workspace_id, self.c.day >= from_date, self.c.day <= to_date]

    def dimension(self, dim: str) -> Any:
        """The SQL expression a dimension groups by (``valid_dimension`` first); null where it is not set."""
        if not self.rollup:
            return _dimension(self.dialect, dim)
        c = self.c
        if dim == "member":  # os_user is already '' where the rows' is null
            return c.os_user + "@" + c.machine_id
        if dim in ("machine", "person"):
            return c.machine_id
        if dim in _BLANK_IS_NONE:
            return func.nullif(c[dim], "")
        return c[dim]

    def match(self, dim: str, value: str | None) -> Any:
        """Rows whose dimension equals ``value`` (None: the dimension is not set)."""
        c = self.c
        if dim == "person":
            owned = _owned_machines(c.workspace_id, value)
            return c.machine_id.not_in(owned) if value is None else c.machine_id.in_(owned)
        if self.rollup and dim in _BLANK_IS_NONE:  # equality on the column itself: its index stays usable
            return c[dim] == "" if value is None else (c[dim] == value if value else false())
        expr = self.dimension(dim)
        return expr.is_(None) if value is None else expr == value


def _source(conn: Connection, dims: Iterable[str], raw: bool = False) -> _Source:
    """usage_rollups when every dimension in ``dims`` is one of its keys (and rollups are on), else usage_rows."""
    rollup = not raw and rollups_on() and all(dim in ROLLUP_DIMENSIONS for dim in dims)
    return _Source(usage_rollups if rollup else usage_rows, rollup, conn.dialect.name)


def _filtered(query: Any, src: _Source, filters: dict[str, str | None] | None) -> Any:
    return query.where(*(src.match(dim, value) for dim, value in (filters or {}).items()))


def focus_groups(
    engine: Engine, workspace_id: str, from_date: str, to_date: str, *, raw: bool = False
) -> list[dict[str, Any]]:
    """The workspace's rows summed per UTC day, provider, model, project, machine
    and whether the price is known: the lines of a FOCUS export (hm_charts.focus)."""
    tokens = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
    with engine.connect() as conn:
        src = _source(conn, ("day", "provider", "model", "project", "machine"), raw)
        c = src.c
        keys = (c.day, c.provider, c.model, src.dimension("project"), c.machine_id, src.unpriced())
        rows = conn.execute(
            select(
                *(key.label(name) for key, name in zip(
                    keys, ("day", "provider", "model", "project", "machine", "unknown"), strict=True)),
                src.calls().label("calls"),
                *src.total("cost_nanos", "nanos"),
                *(part for name in tokens for part in src.total(name, name)),
            )
            .where(*src.within(workspace_id, from_date, to_date))
            .group_by(*keys)
            .order_by(*keys)
        ).all()
    return [
        {
            "day": r.day, "provider": r.provider, "model": r.model, "project": r.project, "machine": r.machine,
            "cost": None if r.unknown else format_nanos(joined_sum(r, "nanos")), "calls": int(r.calls),
            "tokens": {name: joined_sum(r, name) for name in tokens},
        }
        for r in rows
    ]


def machine_totals(
    engine: Engine, workspace_id: str, machine_id: str, from_date: str, to_date: str, *, raw: bool = False
) -> list[dict[str, Any]]:
    """One machine's rows and known cost per day (the totals API; what reconcile compares, exactly)."""
    with engine.connect() as conn:
        src = _source(conn, ("machine", "day"), raw)
        rows = conn.execute(
            select(src.c.day.label("day"), src.calls().label("rows"), *src.total("cost_nanos", "nanos"))
            .where(*src.within(workspace_id, from_date, to_date), src.c.machine_id == machine_id)
            .group_by(src.c.day)
            .order_by(src.c.day)
        ).all()
    return [
        {"date": r.day, "rows": int(r.rows), "cost_usd": format_nanos(joined_sum(r, "nanos"))}
        for r in rows
    ]


ATTRIBUTION_GROUPS = ("project", "repo", "branch", "program", "os_user", "member")
"""Attribution dimensions of the dashboard and the totals API, besides ``tag:KEY``."""
GROUPS = ("day", "provider", "model", "machine", *ATTRIBUTION_GROUPS)


def _outcome_columns() -> tuple[Any, Any, Any]:
    """Counts of the three kinds of unpriced row over the rows, apart (docs/cloud.md):
    errors, rows without usage and rows whose model has no price; the definitions
    the rollups keep (rollups.outcome_sums)."""
    return rollups.outcome_sums(usage_rows.c)


def valid_dimension(dim: str) -> bool:
    from hm_proto.server import tag_problem

    return dim in GROUPS or (dim.startswith("tag:") and tag_problem(dim[4:], "") is None)


def _dimension(dialect: str, dim: str) -> Any:
    """The SQL expression a dimension groups and filters by in usage_rows (``valid_dimension`` first)."""
    c = usage_rows.c
    if dim.startswith("tag:"):
        key = dim[4:]
        if dialect == "postgresql":
            return func.jsonb_extract_path_text(cast(c.tags, JSONB), key)
        return func.json_extract(c.tags, f'$."{key}"')  # key is [A-Za-z0-9_.:/-]: safe in the path
    if dim == "member":  # os_user@machine_id; shown as os_user@hostname
        return func.coalesce(c.os_user, "") + "@" + c.machine_id
    if dim in ("machine", "person"):  # person: merged by the machines' owners afterwards (_by_person)
        return c.machine_id
    return c[dim]


NO_OWNER = "(no owner recorded)"


def _owned_machines(workspace_column: Any, email: str | None) -> Any:
    """The machine ids of this row's workspace whose device ``email`` approved (None: nobody recorded)."""
    owned = select(devices.c.machine_id).where(devices.c.workspace_id == workspace_column)
    if email is None:
        return owned.where(devices.c.approved_by.is_not(None))
    return owned.join(users, users.c.id == devices.c.approved_by).where(users.c.email == email)


def _owners(conn: Connection, workspace_id: str) -> dict[str, str]:
    """machine id -> the email of the person who approved its device (the workspace member who owns it)."""
    return {
        str(r[0]): str(r[1])
        for r in conn.execute(
            select(devices.c.machine_id, users.c.email)
            .join(users, users.c.id == devices.c.approved_by)
            .where(devices.c.workspace_id == workspace_id)
        ).all()
    }


def _by_person(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-machine entries (labelled with their owner) merged into one per owner."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in entries:
        ident = (e.get("date"), e["label"])
        if ident not in merged:
            merged[ident] = dict(e, key=None if e["label"] == NO_OWNER else e["label"])
            continue
        into = merged[ident]
        for name, value in e.items():
            if name not in ("key", "label", "date") and isinstance(value, int):
                into[name] += value
            elif name == "cost_usd":
                into[name] = format_nanos((_cost_nanos(into[name]) or 0) + (_cost_nanos(value) or 0))
    return sorted(merged.values(), key=lambda e: (e.get("date") or "", e["label"]))


def spend_breakdown(
    engine: Engine, workspace_id: str, from_date: str, to_date: str, group: str,
    filters: dict[str, str | None] | None = None, *, raw: bool = False,
) -> list[dict[str, Any]]:
    """Rows, tokens, known cost and the unpriced rows by kind (unknown price, no
    usage, errors: see _outcome_columns), grouped by one dimension.

    ``group`` is one of GROUPS or ``tag:KEY``; machine groups by machine id
    and shows the device's current hostname, member by ``os_user@machine``
    shown as ``os_user@hostname``. ``filters`` keeps only rows whose
    dimension equals the value (None: the dimension is not set).
    """
    with engine.connect() as conn:
        src = _source(conn, (group, *(filters or {})), raw)
        errors, no_usage, unknown = src.outcomes()
        key = src.dimension(group)
        query = (
            select(
                key.label("key"),
                src.calls().label("rows"),
                *src.total("cost_nanos", "nanos"),
                unknown.label("unknown"),
                no_usage.label("no_usage"),
                errors.label("errors"),
                *src.total("input_tokens", "input_tokens"),
                *src.total("output_tokens", "output_tokens"),
            )
            .where(*src.within(workspace_id, from_date, to_date))
            .group_by(key)
            .order_by(key)
        )
        rows = conn.execute(_filtered(query, src, filters)).all()
        hostnames = _names(conn, workspace_id, group)
    out = [
        {
            "key": None if r.key is None else str(r.key),
            "label": _label(group, r.key, hostnames),
            "rows": int(r.rows),
            "nanos": joined_sum(r, "nanos"),
            "unknown": int(r.unknown or 0),
            "no_usage": int(r.no_usage or 0),
            "errors": int(r.errors or 0),
            "input_tokens": joined_sum(r, "input_tokens"),
            "output_tokens": joined_sum(r, "output_tokens"),
        }
        for r in rows
    ]
    return _by_person(out) if group == "person" else out


def _label(group: str, key: Any, hostnames: dict[str, str]) -> str:
    """What a group is shown as; ``hostnames`` is machine id -> hostname (or -> owner for person)."""
    if group == "person":
        return hostnames.get(str(key), NO_OWNER)
    if key is None:
        return "(none)"
    if group == "machine":
        return hostnames.get(str(key), str(key))
    if group == "member":
        user, _, machine = str(key).rpartition("@")
        return f"{user or '(unknown user)'}@{hostnames.get(machine, machine[:8])}"
    return str(key)


def machine_group_totals(
    engine: Engine, workspace_id: str, machine_id: str, from_date: str, to_date: str, group: str,
    *, raw: bool = False,
) -> list[dict[str, Any]]:
    """This machine's rows and known cost per value of one dimension (the totals API's group_by)."""
    with engine.connect() as conn:
        src = _source(conn, ("machine", group), raw)
        key = src.dimension(group)
        rows = conn.execute(
            select(key.label("key"), src.calls().label("rows"), *src.total("cost_nanos", "nanos"))
            .where(*src.within(workspace_id, from_date, to_date), src.c.machine_id == machine_id)
            .group_by(key)
            .order_by(key)
        ).all()
    return [
        {"key": r.key, "rows": int(r.rows), "cost_usd": format_nanos(joined_sum(r, "nanos"))}
        for r in rows
    ]


def _names(conn: Connection, workspace_id: str, group: str) -> dict[str, str]:
    """What _label needs for ``group``: hostnames, owners, or nothing."""
    if group == "person":
        return _owners(conn, workspace_id)
    return _hostnames(conn, workspace_id) if group in ("machine", "member") else {}


def _hostnames(conn: Connection, workspace_id: str) -> dict[str, str]:
    return {
        str(r[0]): str(r[1])
        for r in conn.execute(
            select(devices.c.machine_id, devices.c.hostname).where(
                devices.c.workspace_id == workspace_id
            )
        ).all()
    }


def spend_per_day(
    engine: Engine, workspace_id: str, from_date: str, to_date: str, group: str,
    filters: dict[str, str | None] | None = None, *, raw: bool = False,
) -> dict[str, dict[str, int]]:
    """Known cost in nanos per series (a dimension's labels) and day: {label: {day: nanos}}.

    Only rows with a price count (a day of a series appears when it has one),
    series and days in key and day order."""
    with engine.connect() as conn:
        src = _source(conn, (group, *(filters or {})), raw)
        key = src.dimension(group)
        query = (
            select(key.label("key"), src.c.day, *src.total("cost_nanos", "nanos"))
            .where(*src.within(workspace_id, from_date, to_date), ~src.unpriced())
            .group_by(key, src.c.day)
            .order_by(key, src.c.day)
        )
        rows = conn.execute(_filtered(query, src, filters)).all()
        hostnames = _names(conn, workspace_id, group)
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        label = _label(group, r.key, hostnames)
        days = out.setdefault(label, {})
        days[str(r.day)] = days.get(str(r.day), 0) + joined_sum(r, "nanos")
    return out


def cache_reads(
    engine: Engine, workspace_id: str, from_date: str, to_date: str,
    filters: dict[str, str | None] | None = None, *, raw: bool = False,
) -> list[tuple[str, str, int]]:
    """(provider, model, cache-read tokens) over a range, for the dashboard's cache savings,
    by provider and model; only those whose reads add up to more than 0.

    Every row's count is summed as stored, like every other token total (rows with a
    negative count can only be from before the api.md bounds; the rollups sum them too)."""
    with engine.connect() as conn:
        src = _source(conn, ("provider", "model", *(filters or {})), raw)
        c = src.c
        nonzero = c.cache_read_tokens != 0 if not src.rollup else or_(
            c.cache_read_tokens_hi != 0, c.cache_read_tokens_lo != 0)
        query = (
            select(c.provider, c.model, *src.total("cache_read_tokens", "reads"))
            .where(*src.within(workspace_id, from_date, to_date), nonzero)
            .group_by(c.provider, c.model)
            .order_by(c.provider, c.model)
        )
        rows = conn.execute(_filtered(query, src, filters)).all()
    totals = [(str(r.provider), str(r.model), joined_sum(r, "reads")) for r in rows]
    return [t for t in totals if t[2] > 0]


def spend_by_day_and(
    engine: Engine, workspace_id: str, from_date: str, to_date: str, group: str,
    filters: dict[str, str | None] | None = None, *, raw: bool = False,
) -> list[dict[str, Any]]:
    """Calls, known cost and unpriced calls per day and value of a dimension (the dashboard's CSV)."""
    with engine.connect() as conn:
        src = _source(conn, (group, *(filters or {})), raw)
        errors, no_usage, unknown = src.outcomes()
        key = src.dimension(group)
        query = (
            select(src.c.day, key.label("key"), src.calls().label("rows"),
                   *src.total("cost_nanos", "nanos"), unknown.label("unknown"),
                   no_usage.label("no_usage"), errors.label("errors"))
            .where(*src.within(workspace_id, from_date, to_date))
            .group_by(src.c.day, key)
            .order_by(src.c.day, key)
        )
        rows = conn.execute(_filtered(query, src, filters)).all()
        hostnames = _names(conn, workspace_id, group)
    out = [
        {"date": str(r.day), "key": None if r.key is None else str(r.key), "label": _label(group, r.key, hostnames),
         "rows": int(r.rows), "cost_usd": format_nanos(joined_sum(r, "nanos")), "unknown_price_rows": int(r.unknown or 0),
         "no_usage_rows": int(r.no_usage or 0), "error_rows": int(r.errors or 0)}
        for r in rows
    ]
    return _by_person(out) if group == "person" else out


def scope_spend(
    conn: Connection, workspace_id: str, from_date: str, to_date: str,
    where: dict[str, str | None] | None = None, *, raw: bool = False,
) -> int:
    """Known cost in nanos over a range, of the rows matching ``where`` (a budget's scope)."""
    src = _source(conn, tuple(where or {}), raw)
    query = select(*src.total("cost_nanos", "nanos")).where(*src.within(workspace_id, from_date, to_date))
    return joined_sum(conn.execute(_filtered(query, src, where)).one(), "nanos")


# -- the dashboard: every figure of the page in a few scans -----------------------

_MEASURES = ("rows", "nanos", "unknown", "no_usage", "errors", "input_tokens", "output_tokens")
_BY_DAY_AND_MODEL = ("day", "provider", "model")  # the dimensions of the dashboard's first scan
_BY_MEMBER_AND_PROJECT = ("machine", "person", "member", "os_user", "project")  # ... and of its second


def dashboard_sums(
    engine: Engine, workspace_id: str, from_date: str, to_date: str, prev_from: str, prev_to: str,
    group: str, chart: str, filters: dict[str, str | None] | None = None, *, raw: bool = False,
) -> dict[str, Any]:
    """Everything the dashboard shows: ``groups`` (spend_breakdown's list by day and by
    ``group`` as "split", member, person, machine, model and provider), ``prev_nanos``
    (the known cost from ``prev_from`` to ``prev_to``), ``cache_reads`` and ``per_series``
    (spend_per_day by ``chart``), all with ``filters``.

    Each equals its reader's answer; the lists other than by day may come in another
    order (the page sorts them: views.sort_groups). From the rollups this is two scans
    of the range (by day, provider and model; by machine, OS user and project) summed
    further here, instead of a query per table; otherwise one reader at a time.
    """
    dims = (group, chart, *_BY_DAY_AND_MODEL, *_BY_MEMBER_AND_PROJECT, *(filters or {}))
    with engine.connect() as conn:
        src = _source(conn, dims, raw)
        if src.rollup:
            return _dashboard_from_rollups(engine, conn, src, workspace_id, (from_date, to_date),
                                           (prev_from, prev_to), group, chart, filters)
    groups = {
        name: spend_breakdown(engine, workspace_id, from_date, to_date, dim, filters, raw=raw)
        for name, dim in (("day", "day"), ("split", group), ("member", "member"), ("person", "person"),
                          ("machine", "machine"), ("model", "model"), ("provider", "provider"))
    }
    before = spend_breakdown(engine, workspace_id, prev_from, prev_to, "provider", filters, raw=raw)
    return {
        "groups": groups, "prev_nanos": sum(g["nanos"] for g in before),
        "cache_reads": cache_reads(engine, workspace_id, from_date, to_date, filters, raw=raw),
        "per_series": spend_per_day(engine, workspace_id, from_date, to_date, chart, filters, raw=raw),
    }


def _dashboard_from_rollups(
    engine: Engine, conn: Connection, src: _Source, workspace_id: str, span: tuple[str, str],
    prev: tuple[str, str], group: str, chart: str, filters: dict[str, str | None] | None,
) -> dict[str, Any]:
    c = src.c
    errors, no_usage, unknown = src.outcomes()
    # Each sum as a BIGINT, never null: plain ints to Python (a part of a split sum overflows only past
    # 9 * 10^9 rows in the range, see exact_sum; PostgreSQL would then refuse the query, not round).
    sums = [func.coalesce(cast(s, BigInteger), 0) for s in (
        src.calls(), *src.total("cost_nanos", "nanos"), unknown, no_usage, errors,
        *src.total("input_tokens", "input_tokens"), *src.total("output_tokens", "output_tokens"),
        *src.total("cache_read_tokens", "reads"), func.sum(case((c.priced.is_(True), 1), else_=0)))]
    by_model, by_member = (c.day, c.provider, c.model), (c.machine_id, c.os_user, c.project)
    where = src.within(workspace_id, *span)
    # Columns: the 6 keys (null where the grouping does not use them), 1 for the by_member grouping, then sums.
    if conn.dialect.name == "postgresql":  # one scan, both groupings hashed at once, in memory
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")  # this read's transaction only
        query: Any = select(*by_model, *by_member, func.grouping(c.day), *sums).where(*where).group_by(
            func.grouping_sets(tuple_(*by_model), tuple_(*by_member)))
        rows = [tuple(r) for r in conn.execute(_filtered(query, src, filters))]
    else:
        blank = (null(), null(), null())
        rows = [tuple(r) for part in (
            select(*by_model, *blank, literal(0), *sums).where(*where).group_by(*by_model),
            select(*blank, *by_member, literal(1), *sums).where(*where).group_by(*by_member),
        ) for r in conn.execute(_filtered(part, src, filters))]
    before = conn.execute(_filtered(
        select(*src.total("cost_nanos", "nanos")).where(*src.within(workspace_id, *prev)), src, filters)).one()
    names = {"machine": _hostnames(conn, workspace_id), "person": _owners(conn, workspace_id)}
    names["member"] = names["machine"]

    # Each row once as (keys, _MEASURES as plain ints, cache reads, priced rollup rows).
    model_rows: list[tuple[Any, ...]] = []
    member_rows: list[tuple[Any, ...]] = []
    for r in rows:
        (member_rows if r[6] else model_rows).append((
            r[:6], (r[7], r[8] * _SPLIT + r[9], r[10], r[11], r[12], r[13] * _SPLIT + r[14], r[15] * _SPLIT + r[16]),
            r[17] * _SPLIT + r[18], r[19]))
    position = {"day": 0, "provider": 1, "model": 2, "machine": 3, "person": 3, "os_user": 4, "project": 5}

    def keys_of(dim: str, rows: list[tuple[Any, ...]]) -> list[Any]:
        """Each row's value of ``dim`` (member: os_user@machine; '' project or OS user: None)."""
        if dim == "member":
            return [f"{keys[4]}@{keys[3]}" for keys, *_ in rows]
        at = position[dim]
        if dim in _BLANK_IS_NONE:
            return [keys[at] or None for keys, *_ in rows]
        return [keys[at] for keys, *_ in rows]

    def breakdown(dim: str) -> list[dict[str, Any]]:
        rows = model_rows if dim in _BY_DAY_AND_MODEL else member_rows
        grouped: dict[Any, list[tuple[int, ...]]] = {}
        for key, row in zip(keys_of(dim, rows), rows, strict=True):
            grouped.setdefault(key, []).append(row[1])
        out = [{"key": None if key is None else str(key), "label": _label(dim, key, names.get(dim, {})),
                **dict(zip(_MEASURES, map(sum, zip(*grouped[key], strict=True)), strict=True))}
               for key in sorted(grouped, key=lambda k: (k is None, k or ""))]
        return _by_person(out) if dim == "person" else out

    groups = {name: breakdown(dim) for name, dim in (
        ("day", "day"), ("split", group), ("member", "member"), ("person", "person"), ("machine", "machine"),
        ("model", "model"), ("provider", "provider"))}
    cache: dict[tuple[str, str], int] = {}
    for keys, _measures, reads, _priced in model_rows:
        cache[(keys[1], keys[2])] = cache.get((keys[1], keys[2]), 0) + reads
    per_series: dict[str, dict[str, int]] = {}
    if chart in _BY_DAY_AND_MODEL:
        for key, (keys, measures, _reads, priced) in sorted(zip(keys_of(chart, model_rows), model_rows, strict=True),
                                                            key=lambda kr: (kr[0], kr[1][0][0])):
            if priced:  # spend_per_day sums priced rows only: a day appears when it has one
                days = per_series.setdefault(_label(chart, key, {}), {})
                days[keys[0]] = days.get(keys[0], 0) + measures[1]
    else:
        per_series = spend_per_day(engine, workspace_id, *span, chart, filters)
    return {
        "groups": groups, "prev_nanos": joined_sum(before, "nanos"),
        "cache_reads": [(str(p), str(m), n) for (p, m), n in sorted(cache.items()) if n > 0],
        "per_series": per_series,
    }


def stored_row_count(engine: Engine, workspace_id: str | None = None) -> int:
    with engine.connect() as conn:
        q = select(func.count()).select_from(usage_rows)
        if workspace_id is not None:
            q = q.where(usage_rows.c.workspace_id == workspace_id)
        return int(conn.execute(q).scalar_one())
