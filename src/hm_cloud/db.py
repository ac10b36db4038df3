"""Schema and engine: SQLAlchemy Core tables that run on SQLite and PostgreSQL.

The schema is created on start; ``schema_version`` records its version. A new
database gets every table and column at once (``create_all``) and the current
version; an existing one is upgraded in place by the ``MIGRATIONS`` steps after
its version, in one locked transaction (docs/cloud.md, "Schema upgrades").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

# Server-wide key/value settings (the session signing secret lives here so
# sessions survive a restart without a config file).
settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # The workspace `/` opens (version 3; null: the first by name).
    Column("last_workspace_id", String(36), nullable=True),
)

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("slug", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("workspace_id", String(36), ForeignKey("workspaces.id"), primary_key=True),
    Column("role", String(16), nullable=False),
)

# One device per (workspace, machine): re-pairing a machine updates its row.
devices = Table(
    "devices",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(36), ForeignKey("workspaces.id"), nullable=False),
    Column("machine_id", String(64), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("os", String(120), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("paired_at", Float, nullable=False),
    Column("last_sync_at", Float, nullable=True),
    Column("rows_synced", BigInteger, nullable=False, default=0),
    Column("revoked_at", Float, nullable=True),
    # Who approved its pairing (version 3; null for devices paired before).
    Column("approved_by", Integer, nullable=True),
    UniqueConstraint("workspace_id", "machine_id", name="devices_workspace_machine"),
)

# Tokens are kept after revocation so revoking twice answers 200 (RFC 7009).
tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("device_id", String(36), ForeignKey("devices.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# A pairing request, keyed by the SHA-256 of its device code. ``token_plain``
# holds the freshly minted token only between approval and the one poll that
# collects it.
pairings = Table(
    "pairings",
    metadata,
    Column("device_code_hash", String(64), primary_key=True),
    Column("user_code", String(16), nullable=False, index=True),
    Column("machine_id", String(64), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("os", String(120), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("workspace_hint", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # pending approved denied consumed cancelled
    Column("interval", Integer, nullable=False),
    Column("last_poll_end", Float, nullable=True),
    Column("last_poll_held", Float, nullable=True),
    Column("workspace_id", String(36), nullable=True),
    Column("device_id", String(36), nullable=True),
    Column("token_plain", String(64), nullable=True),
)

# Per-workspace data settings (hm_cloud.retention; docs/cloud.md, "Retention").
# A new table: create_all adds it to an existing database. No row: the defaults
# (keep everything).
workspace_settings = Table(
    "workspace_settings",
    metadata,
    Column("workspace_id", String(36), ForeignKey("workspaces.id"), primary_key=True),
    Column("retention_days", Integer, nullable=True),  # null: keep everything; else >= 7
    Column("updated_at", Float, nullable=False),
    # Accept request bodies from machines that sync them (version 4; null/false: refuse).
    Column("accept_bodies", Boolean, nullable=True),
)

# Opt-in request bodies (hm_cloud.request_bodies): one Fernet token per row, under
# the workspace's data key, which is itself wrapped by the server's master key.
workspace_keys = Table(
    "workspace_keys",
    metadata,
    Column("workspace_id", String(36), ForeignKey("workspaces.id"), primary_key=True),
    Column("wrapped_key", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

request_bodies = Table(
    "request_bodies",
    metadata,
    Column("workspace_id", String(36), primary_key=True),
    Column("id", String(36), primary_key=True),
    Column("machine_id", String(64), nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("ciphertext", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

# Scheduled jobs run by one server process at a time (hm_cloud.retention.Lease):
# a holder owns the job until ``expires_at`` and renews while it works;
# ``last_done_at`` spaces the runs however many processes share the database.
job_leases = Table(
    "job_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=True),
    Column("expires_at", Float, nullable=False),
    Column("last_done_at", Float, nullable=True),
    Column("runs", Integer, nullable=False, default=0),  # passes done, ever
)

usage_rows = Table(
    "usage_rows",
    metadata,
    Column("workspace_id", String(36), primary_key=True),
    Column("id", String(36), primary_key=True),
    Column("machine_id", String(64), nullable=False),
    Column("ts", String(40), nullable=False),
    Column("day", String(10), nullable=False),
    Column("provider", String(512), nullable=False),
    Column("model", String(512), nullable=False),
    Column("endpoint", String(512), nullable=False),
    Column("status", Integer, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("cache_read_tokens", BigInteger, nullable=True),
    Column("cache_write_tokens", BigInteger, nullable=True),
    Column("reasoning_tokens", BigInteger, nullable=True),
    Column("cost_usd", String(64), nullable=True),
    # cost in nano-dollars: sums exactly in SQL on both engines; null = unknown.
    Column("cost_nanos", BigInteger, nullable=True),
    Column("price_version", String(512), nullable=False),
    Column("latency_ms", BigInteger, nullable=False),
    Column("ttfb_ms", BigInteger, nullable=True),
    Column("received_at", Float, nullable=False),
    # Attribution (version 2; null for rows of older daemons). Names, never paths.
    Column("project", String(200), nullable=True),
    Column("repo", String(200), nullable=True),
    Column("branch", String(200), nullable=True),
    Column("program", String(200), nullable=True),
    Column("os_user", String(200), nullable=True),
    Column("tags", Text, nullable=True),  # a JSON object of strings
    Index("usage_rows_machine_day", "workspace_id", "machine_id", "day"),
    Index("usage_rows_workspace_day", "workspace_id", "day"),
)

# Per-day aggregates of usage_rows (version 5; hm_cloud.rollups, docs/cloud.md
# "Rollups"): one row per workspace, day, machine, provider, model, project,
# OS user and whether the row had a price. Kept in the ingest transaction, so
# totals, the dashboard and the usage API read these instead of every row.
# project and os_user hold '' for "none": a row's names are 1-200 characters,
# so '' never stands for a real name, and the key needs no NULLs. Sums are kept
# as two parts (value // 10**9 and value % 10**9, see store.exact_sum) so that
# no legal data can overflow a BIGINT.
ROLLUP_KEYS = ("workspace_id", "day", "machine_id", "provider", "model", "project", "os_user", "priced")
ROLLUP_COUNTS = ("calls", "errors", "no_usage", "unknown")
ROLLUP_SUMMED = ("cost_nanos", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens")
usage_rollups = Table(
    "usage_rollups",
    metadata,
    Column("workspace_id", String(36), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("machine_id", String(64), primary_key=True),
    Column("provider", String(512), primary_key=True),
    Column("model", String(512), primary_key=True),
    Column("project", String(200), primary_key=True),
    Column("os_user", String(200), primary_key=True),
    Column("priced", Boolean, primary_key=True),  # cost_nanos is not null
    *(Column(name, BigInteger, nullable=False) for name in ROLLUP_COUNTS),
    *(Column(f"{name}_{part}", BigInteger, nullable=False) for name in ROLLUP_SUMMED for part in ("hi", "lo")),
    Index("usage_rollups_machine_day", "workspace_id", "machine_id", "day"),
    # The dashboard's range of days (version 7): narrower than the primary key, so PostgreSQL
    # reads a month of a big workspace by a bitmap scan instead of the whole table.
    Index("usage_rollups_workspace_day", "workspace_id", "day"),
)

# One row per counted attempt of a guess or rate limit (hm_cloud.limits): every
# server process sharing the database sees the same counts, and a restart keeps
# them. ``key`` is the limit's name and a hash of what it limits (an account,
# a client address), never the email or address itself. A new table: made by
# create_all on every start, so an older database gains it without a step.
limiter_slots = Table(
    "limiter_slots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index("limiter_slots_key_at", "key", "at"),
    Index("limiter_slots_at", "at"),
)

# Workspace budgets (hm_cloud.budgets; docs/budgets.md). New tables: create_all
# adds them to an existing database, no migration step needed.
workspace_budgets = Table(
    "workspace_budgets",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(36), ForeignKey("workspaces.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("scope_kind", String(16), nullable=False),  # workspace | machine | member | project
    Column("scope_value", String(200), nullable=True),
    Column("period", String(8), nullable=False),  # day | week | month (UTC)
    Column("limit_nanos", BigInteger, nullable=False),
    Column("thresholds", String(100), nullable=False),  # "50,80,100"
    Column("webhook_url", String(2000), nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("workspace_id", "name", name="workspace_budgets_name"),
)

workspace_budget_alerts = Table(
    "workspace_budget_alerts",
    metadata,
    Column("budget_id", String(36), primary_key=True),
    Column("period", String(16), primary_key=True),
    Column("threshold", Integer, primary_key=True),
    Column("fired_at", Float, nullable=False),
    Column("spend_nanos", BigInteger, nullable=False),
)

# The team cloud (version 3; docs/cloud.md, "Workspaces, members and roles").
# An invitation link carries a random secret; only its SHA-256 is stored.
invitations = Table(
    "invitations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(36), ForeignKey("workspaces.id"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("email", String(320), nullable=True),  # where it was sent, if it was
    Column("created_by", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
    Column("used_by", Integer, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Index("invitations_workspace", "workspace_id"),
)

# Who did what, when, from where: invitations, joins, role changes, removals,
# revokes, settings and API-key events. ``actor`` is the email at the time.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workspace_id", String(36), nullable=False),
    Column("at", Float, nullable=False),
    Column("actor", String(320), nullable=True),
    Column("action", String(40), nullable=False),
    Column("target", String(400), nullable=False),
    Column("address", String(64), nullable=True),
    Index("audit_log_workspace_id", "workspace_id", "id"),
    Index("audit_log_at", "at"),  # version 6: the audit retention deletes the oldest (hm_cloud.retention)
)

# Read-only workspace API keys (hm_read_…): SHA-256 only, named, revocable.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(36), ForeignKey("workspaces.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_by", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

ATTRIBUTION_COLUMNS = ("project", "repo", "branch", "program", "os_user", "tags")


def _add_columns(table: Table, names: tuple[str, ...]) -> Callable[[Connection], None]:
    """A step that adds nullable columns as this module defines them (same SQL on both engines).

    A column the table already has is skipped: create_all makes a table that
    was missing with every column, also in a database older than the step.
    """

    def step(conn: Connection) -> None:
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for name in names:
            if name in present:
                continue
            column = table.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")

    return step


def _add_index(table: Table, name: str) -> Callable[[Connection], None]:
    """A step that creates one of ``table``'s indexes as this module defines it, unless it exists
    (create_all made it with a table that was missing)."""

    def step(conn: Connection) -> None:
        index = next(i for i in table.indexes if i.name == name)
        index.create(conn, checkfirst=True)

    return step


def _fill_rollups(conn: Connection) -> None:
    from .rollups import rebuild

    rebuild(conn)


# In-place upgrades, oldest first: (version after the step, step). Append; never edit one.
MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (2, _add_columns(usage_rows, ATTRIBUTION_COLUMNS)),
    # 3: the team cloud. Its new tables come from create_all; these are its columns.
    (3, _add_columns(users, ("last_workspace_id",))),
    (3, _add_columns(devices, ("approved_by",))),
    # 4: workspaces that accept request bodies (hm_cloud.request_bodies).
    (4, _add_columns(workspace_settings, ("accept_bodies",))),
    # 5: usage_rollups (create_all made the table empty); filled from the rows held.
    (5, _fill_rollups),
    # 6: the audit log's retention finds the oldest entries by time.
    (6, _add_index(audit_log, "audit_log_at")),
    # 7: the dashboard reads a range of days of usage_rollups by this index.
    (7, _add_index(usage_rollups, "usage_rollups_workspace_day")),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class DatabaseUrlError(ValueError):
    """The --db URL cannot be used; the message says what to pass instead."""


def default_db_url() -> str:
    """A SQLite file under the user's data dir (``$XDG_DATA_HOME`` or ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'halton-meter-cloud' / 'cloud.sqlite'}"


_URL_HINT = "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DBNAME"


WAL_AUTOCHECKPOINT_PAGES = 8000


def make_engine(db_url: str) -> Engine:
    """An engine for ``db_url``; SQLite gets WAL, a busy timeout and its folder made."""
    try:
        url = make_url(db_url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"cannot parse database URL {db_url!r}: {_URL_HINT}") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseUrlError(f"database URL {db_url!r} names no file: {_URL_HINT}")
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run in the background while a server runs (store.start_checkpointer);
            # a writer checkpoints inline only past 8,000 WAL pages (32 MB).
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if backend == "postgresql":
        if url.get_driver_name() not in ("psycopg", "psycopg2"):
            url = url.set(drivername="postgresql+psycopg")
        try:
            return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        except NoSuchModuleError as exc:
            raise DatabaseUrlError(f"no driver for {db_url!r}: {_URL_HINT}") from exc
    raise DatabaseUrlError(f"unsupported database {backend!r} in {db_url!r}: {_URL_HINT}")


def init_schema(engine: Engine) -> None:
    """Create missing tables, upgrade an older schema in place, record the version (idempotent).

    Safe when several server processes start at once: the version is read and
    the steps run under a lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``LOCK TABLE``).
    """
    metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("LOCK TABLE schema_version IN EXCLUSIVE MODE")
        found = conn.execute(select(schema_version.c.version)).scalar()
        if found is None:  # a new database: create_all made the current schema
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            return
        if found > SCHEMA_VERSION:
            raise DatabaseUrlError(
                f"the database has schema version {found}, newer than this server "
                f"({SCHEMA_VERSION}): upgrade halton-meter-cloud"
            )
        for version, step in MIGRATIONS:
            if version > found:
                step(conn)
        if found < SCHEMA_VERSION:
            conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
