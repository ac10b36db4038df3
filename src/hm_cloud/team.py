"""The team cloud's rules and storage: roles, members, invitations, the audit log, read keys.

The permission matrix (docs/cloud.md, "Roles") is :data:`PERMISSIONS`; every
page and endpoint asks :func:`can`. Membership changes run in one
transaction that also checks the last-owner rule, so two admins acting at
once cannot leave a workspace without an owner.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from hm_proto.server import hash_token

from .db import api_keys, audit_log, devices, invitations, memberships, tokens, users, workspaces
from .store import SignupError, Workspace, lock_row, write_transaction

ROLES = ("owner", "admin", "member", "viewer")
ROLE_TEXT = {
    "owner": "Owner — everything, including making owners",
    "admin": "Admin — invite and remove people, change roles, revoke devices, settings",
    "member": "Member — pair own machines, see the dashboard",
    "viewer": "Viewer — see the dashboard only",
}
INVITATION_TTL_SECONDS = 7 * 24 * 3600
MAX_PENDING_INVITATIONS = 100
MAX_API_KEYS = 50
MAX_WORKSPACES_PER_PERSON = 100  # memberships of one account (each new workspace adds one)
AUDIT_PAGE = 100

_ADMINS = frozenset({"owner", "admin"})
_PAIRERS = frozenset({"owner", "admin", "member"})
_EVERYONE = frozenset(ROLES)
# action -> the roles allowed to do it. Tested cell by cell (tests/test_cloud_team.py).
PERMISSIONS: dict[str, frozenset[str]] = {
    "view_dashboard": _EVERYONE,
    "view_devices": _EVERYONE,
    "view_members": _EVERYONE,
    "pair_device": _PAIRERS,
    "revoke_own_device": _PAIRERS,
    "revoke_any_device": _ADMINS,
    "invite": _ADMINS,
    "revoke_invitation": _ADMINS,
    "change_role": _ADMINS,
    "make_owner": frozenset({"owner"}),
    "remove_member": _ADMINS,
    "change_settings": _ADMINS,
    "manage_api_keys": _ADMINS,
    "view_audit": _ADMINS,
    "leave": _EVERYONE,
}


def can(role: str, action: str) -> bool:
    return role in PERMISSIONS[action]


class TeamError(ValueError):
    """A membership change the rules refuse; the message says why and what to do."""


# -- audit log -----------------------------------------------------------------------


def audit(
    conn: Connection, workspace_id: str, actor: str | None, action: str, target: str,
    address: str | None, now: float,
) -> None:
    """One audit entry, written in the caller's transaction (so it is there iff the change is)."""
    conn.execute(
        audit_log.insert().values(
            workspace_id=workspace_id, at=now, actor=(actor or "")[:320] or None,
            action=action[:40], target=target[:400], address=(address or "")[:64] or None,
        )
    )


def record(
    engine: Engine, workspace_id: str, actor: str | None, action: str, target: str,
    address: str | None, now: float,
) -> None:
    """An audit entry on its own (for changes made by code that does not take a connection)."""
    with engine.begin() as conn:
        audit(conn, workspace_id, actor, action, target, address, now)


def audit_entries(engine: Engine, workspace_id: str, before: int | None = None) -> list[dict[str, Any]]:
    """The newest AUDIT_PAGE entries (older than id ``before``), newest first."""
    query = select(audit_log).where(audit_log.c.workspace_id == workspace_id)
    if before is not None:
        query = query.where(audit_log.c.id < before)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(audit_log.c.id.desc()).limit(AUDIT_PAGE)).all()
    return [dict(r._mapping) for r in rows]


# -- workspaces and members ------------------------------------------------------------------


def create_workspace(
    engine: Engine, user_id: int, actor: str, slug: str, name: str, address: str | None, now: float
) -> Workspace:
    """A new workspace with ``user_id`` as its owner; SignupError if the slug is taken."""
    with write_transaction(engine) as conn:
        lock_row(conn, users, user_id)
        if conn.execute(select(workspaces.c.id).where(workspaces.c.slug == slug)).first():
            raise SignupError(f"The workspace name '{slug}' is taken: choose another.")
        belongs = conn.execute(
            select(func.count()).select_from(memberships).where(memberships.c.user_id == user_id)
        ).scalar_one()
        if belongs >= MAX_WORKSPACES_PER_PERSON:
            raise SignupError(f"You belong to {MAX_WORKSPACES_PER_PERSON} workspaces, the most one person may: "
                              "leave one before you create another.")
        ws = Workspace(str(uuid.uuid4()), slug, name, "owner")
        try:
            conn.execute(workspaces.insert().values(id=ws.id, slug=slug, name=name, created_at=now))
        except IntegrityError:  # PostgreSQL: someone else took the slug after the check (was a 500)
            raise SignupError(f"The workspace name '{slug}' is taken: choose another.") from None
        conn.execute(memberships.insert().values(user_id=user_id, workspace_id=ws.id, role="owner"))
        audit(conn, ws.id, actor, "workspace.create", f"workspace {slug}", address, now)
    return ws


def list_members(engine: Engine, workspace_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(users.c.id, users.c.email, memberships.c.role)
            .join(memberships, memberships.c.user_id == users.c.id)
            .where(memberships.c.workspace_id == workspace_id)
            .order_by(users.c.email)
        ).all()
    order = {r: i for i, r in enumerate(ROLES)}
    members = [{"id": int(r.id), "email": str(r.email), "role": str(r.role)} for r in rows]
    return sorted(members, key=lambda m: (order.get(m["role"], 9), m["email"]))


def _role_of(conn: Connection, workspace_id: str, user_id: int) -> str | None:
    value = conn.execute(
        select(memberships.c.role).where(
            memberships.c.workspace_id == workspace_id, memberships.c.user_id == user_id
        )
    ).scalar()
    return None if value is None else str(value)


def _owners(conn: Connection, workspace_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(memberships).where(
                memberships.c.workspace_id == workspace_id, memberships.c.role == "owner"
            )
        ).scalar_one()
    )


def _email(conn: Connection, user_id: int) -> str:
    return str(conn.execute(select(users.c.email).where(users.c.id == user_id)).scalar() or f"user {user_id}")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise TeamError("Choose a role: owner, admin, member or viewer.")


def _acting(conn: Connection, workspace_id: str, actor_id: int, action: str, refusal: str) -> str:
    """Lock the workspace for the change and return the actor's role; PermissionError saying
    ``refusal`` when they may not do ``action`` there."""
    lock_row(conn, workspaces, workspace_id)
    mine = _role_of(conn, workspace_id, actor_id)
    if mine is None or not can(mine, action):
        raise PermissionError(refusal)
    return mine


def change_role(
    engine: Engine, workspace_id: str, actor_id: int, actor: str, target_id: int, role: str,
    address: str | None, now: float,
) -> str:
    """Give ``target_id`` ``role``; returns their email. TeamError when the rules refuse."""
    _check_role(role)
    with write_transaction(engine) as conn:
        mine = _acting(conn, workspace_id, actor_id, "change_role", "Only owners and admins change roles.")
        theirs = _role_of(conn, workspace_id, target_id)
        if theirs is None:
            raise TeamError("That person is not a member of this workspace.")
        if (role == "owner" or theirs == "owner") and not can(mine, "make_owner"):
            raise PermissionError("Only an owner makes owners or changes an owner's role.")
        if theirs == "owner" and role != "owner" and _owners(conn, workspace_id) <= 1:
            raise TeamError("This is the last owner: make someone else an owner first.")
        email = _email(conn, target_id)
        if theirs != role:
            conn.execute(
                update(memberships)
                .where(memberships.c.workspace_id == workspace_id, memberships.c.user_id == target_id)
                .values(role=role)
            )
            audit(conn, workspace_id, actor, "member.role", f"{email}: {theirs} → {role}", address, now)
    return email


def remove_member(
    engine: Engine, workspace_id: str, actor_id: int, actor: str, target_id: int,
    address: str | None, now: float,
) -> str:
    """Remove ``target_id`` (or leave, when it is the actor); returns their email."""
    with write_transaction(engine) as conn:
        leaving = actor_id == target_id
        mine = _acting(conn, workspace_id, actor_id, "leave" if leaving else "remove_member",
                       "Only owners and admins remove people.")
        theirs = _role_of(conn, workspace_id, target_id)
        if theirs is None:
            raise TeamError("That person is not a member of this workspace.")
        if theirs == "owner" and not leaving and not can(mine, "make_owner"):
            raise PermissionError("Only an owner removes an owner.")
        if theirs == "owner" and _owners(conn, workspace_id) <= 1:
            raise TeamError("This is the last owner: make someone else an owner first.")
        email = _email(conn, target_id)
        conn.execute(
            memberships.delete().where(
                memberships.c.workspace_id == workspace_id, memberships.c.user_id == target_id
            )
        )
        revoked = _revoke_devices_of(conn, workspace_id, target_id, now)
        action = "member.leave" if leaving else "member.remove"
        machines = f", {revoked} device{'s' if revoked != 1 else ''} revoked" if revoked else ""
        audit(conn, workspace_id, actor, action, f"{email} ({theirs}{machines})", address, now)
    return email


def _revoke_devices_of(conn: Connection, workspace_id: str, user_id: int, now: float) -> int:
    """Revoke the live devices ``user_id`` approved in the workspace (they leave with their
    person: a removed member's machine kept uploading rows and bodies); returns how many."""
    ids = [str(r[0]) for r in conn.execute(select(devices.c.id).where(
        devices.c.workspace_id == workspace_id, devices.c.approved_by == user_id, devices.c.revoked_at.is_(None)))]
    if ids:
        conn.execute(update(tokens).where(tokens.c.device_id.in_(ids), tokens.c.revoked_at.is_(None))
                     .values(revoked_at=now))
        conn.execute(update(devices).where(devices.c.id.in_(ids)).values(revoked_at=now))
    return len(ids)


# -- invitations --------------------------------------------------------------------------


def create_invitation(
    engine: Engine, workspace_id: str, actor_id: int, actor: str, role: str, email: str | None,
    token: str, address: str | None, now: float,
) -> str:
    """Store an invitation (the SHA-256 of ``token``); returns its id."""
    _check_role(role)
    with write_transaction(engine) as conn:
        mine = _acting(conn, workspace_id, actor_id, "invite", "Only owners and admins invite people.")
        if role == "owner" and not can(mine, "make_owner"):
            raise PermissionError("Only an owner invites owners.")
        pending = conn.execute(
            select(func.count()).select_from(invitations).where(*_pending(workspace_id, now))
        ).scalar_one()
        if pending >= MAX_PENDING_INVITATIONS:
            raise TeamError(f"{MAX_PENDING_INVITATIONS} invitations are pending: revoke some first.")
        inv_id = str(uuid.uuid4())
        conn.execute(
            invitations.insert().values(
                id=inv_id, workspace_id=workspace_id, token_hash=hash_token(token), role=role,
                email=email, created_by=actor_id, created_at=now,
                expires_at=now + INVITATION_TTL_SECONDS,
            )
        )
        audit(conn, workspace_id, actor, "invitation.create",
              f"{role} invitation{' for ' + email if email else ''}", address, now)
    return inv_id


def _live(now: float) -> Sequence[Any]:
    """An invitation not used, not revoked and not expired."""
    c = invitations.c
    return (c.used_at.is_(None), c.revoked_at.is_(None), c.expires_at > now)


def _pending(workspace_id: str, now: float) -> Sequence[Any]:
    return (invitations.c.workspace_id == workspace_id, *_live(now))


def _with_creator(engine: Engine, table: Table, columns: Sequence[str], where: Sequence[Any],
                  order: Sequence[Any]) -> list[dict[str, Any]]:
    """``columns`` of ``table``'s rows (invitations, API keys) with their creator's email as ``by``."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*(table.c[name] for name in columns), users.c.email.label("by"))
            .outerjoin(users, users.c.id == table.c.created_by)
            .where(*where)
            .order_by(*order)
        ).all()
    return [dict(r._mapping) for r in rows]


def _revoke(
    engine: Engine, table: Table, live: Sequence[Any], workspace_id: str, item_id: str, actor: str,
    action: str, target: Callable[[Any], str], address: str | None, now: float,
) -> bool:
    """Revoke ``table``'s row ``item_id`` if it is in the workspace and ``live``, audited as
    ``action`` on ``target(row)`` in the same transaction; False when there was none to revoke."""
    with write_transaction(engine) as conn:
        done = conn.execute(
            update(table)
            .where(table.c.id == item_id, table.c.workspace_id == workspace_id, *live)
            .values(revoked_at=now)
        )
        if done.rowcount != 1:
            return False
        row = conn.execute(select(table).where(table.c.id == item_id)).one()
        audit(conn, workspace_id, actor, action, target(row), address, now)
    return True


def pending_invitations(engine: Engine, workspace_id: str, now: float) -> list[dict[str, Any]]:
    return _with_creator(engine, invitations, ("id", "role", "email", "created_at", "expires_at"),
                         _pending(workspace_id, now), (invitations.c.created_at.desc(),))


def revoke_invitation(
    engine: Engine, workspace_id: str, actor: str, invitation_id: str, address: str | None, now: float
) -> bool:
    return _revoke(engine, invitations, _live(now), workspace_id, invitation_id, actor, "invitation.revoke",
                   lambda row: f"invitation {row.id[:8]}", address, now)


def open_invitation(engine: Engine, token: str, now: float) -> dict[str, Any] | None:
    """The live invitation for a link's token, with the workspace's slug and name."""
    with engine.connect() as conn:
        row = conn.execute(
            select(invitations.c.id, invitations.c.role, invitations.c.workspace_id,
                   workspaces.c.slug, workspaces.c.name)
            .join(workspaces, workspaces.c.id == invitations.c.workspace_id)
            .where(invitations.c.token_hash == hash_token(token), *_live(now))
        ).first()
    return dict(row._mapping) if row else None


def accept_invitation(
    engine: Engine, token: str, user_id: int | None, new_account: tuple[str, str] | None,
    address: str | None, now: float,
) -> tuple[int, Workspace, bool]:
    """Use the invitation once: join ``user_id`` (or the new account (email, password hash)).

    Returns (user id, workspace, joined); joined is False for someone already
    a member (their role is kept). TeamError when the link is no longer valid,
    SignupError when the new account's email is taken.
    """
    with write_transaction(engine) as conn:
        inv = conn.execute(
            select(invitations.c.id, invitations.c.role, invitations.c.workspace_id,
                   workspaces.c.slug, workspaces.c.name)
            .join(workspaces, workspaces.c.id == invitations.c.workspace_id)
            .where(invitations.c.token_hash == hash_token(token))
        ).first()
        taken = conn.execute(
            update(invitations)
            .where(invitations.c.token_hash == hash_token(token), *_live(now))
            .values(used_at=now)
        )
        if inv is None or taken.rowcount != 1:
            raise TeamError(INVITATION_GONE)
        if new_account is not None:
            email, pw_hash = new_account
            if conn.execute(select(users.c.id).where(users.c.email == email)).first():
                raise SignupError(f"An account for {email} already exists: sign in, then open the link again.")
            try:
                inserted = conn.execute(
                    users.insert().values(email=email, password_hash=pw_hash, created_at=now)
                ).inserted_primary_key
            except IntegrityError:  # a sign-up with this email won the race (the link stays unused)
                raise SignupError(f"An account for {email} already exists: sign in, then open the link again.") from None
            assert inserted is not None
            user_id = int(inserted[0])
        assert user_id is not None
        conn.execute(update(invitations).where(invitations.c.id == inv.id).values(used_by=user_id))
        existing = _role_of(conn, inv.workspace_id, user_id)
        email = _email(conn, user_id)
        if existing is None:
            conn.execute(memberships.insert().values(user_id=user_id, workspace_id=inv.workspace_id, role=inv.role))
            audit(conn, inv.workspace_id, email, "member.join", f"{email} as {inv.role}", address, now)
        ws = Workspace(str(inv.workspace_id), str(inv.slug), str(inv.name), existing or str(inv.role))
    return user_id, ws, existing is None


INVITATION_GONE = (
    "This invitation link is not valid: it was used, revoked or is older than 7 days. "
    "Ask the workspace's admin for a new one."
)


# -- read-only API keys ------------------------------------------------------------------


def create_api_key(
    engine: Engine, workspace_id: str, actor_id: int, actor: str, name: str, key: str,
    address: str | None, now: float,
) -> str:
    with write_transaction(engine) as conn:
        lock_row(conn, workspaces, workspace_id)
        live = conn.execute(
            select(func.count()).select_from(api_keys).where(
                api_keys.c.workspace_id == workspace_id, api_keys.c.revoked_at.is_(None)
            )
        ).scalar_one()
        if live >= MAX_API_KEYS:
            raise TeamError(f"This workspace has {MAX_API_KEYS} keys: revoke one first.")
        key_id = str(uuid.uuid4())
        conn.execute(
            api_keys.insert().values(
                id=key_id, workspace_id=workspace_id, name=name, key_hash=hash_token(key),
                created_by=actor_id, created_at=now,
            )
        )
        audit(conn, workspace_id, actor, "api_key.create", f"key {name}", address, now)
    return key_id


def list_api_keys(engine: Engine, workspace_id: str) -> list[dict[str, Any]]:
    return _with_creator(engine, api_keys, ("id", "name", "created_at", "last_used_at", "revoked_at"),
                         (api_keys.c.workspace_id == workspace_id,),
                         (api_keys.c.revoked_at.is_not(None), api_keys.c.created_at.desc()))


def revoke_api_key(
    engine: Engine, workspace_id: str, actor: str, key_id: str, address: str | None, now: float
) -> bool:
    return _revoke(engine, api_keys, (api_keys.c.revoked_at.is_(None),), workspace_id, key_id, actor,
                   "api_key.revoke", lambda row: f"key {row.name}", address, now)


# Last-used is written at most this often per key (a script polling every
# second must not make every read a write).
LAST_USED_EVERY_SECONDS = 60.0


def authenticate_read_key(engine: Engine, key_hash: str, now: float) -> tuple[str, Workspace] | None:
    """(key hash, workspace) for a live read key; notes its use."""
    with engine.connect() as conn:
        row = conn.execute(
            select(api_keys.c.key_hash, api_keys.c.id, api_keys.c.last_used_at,
                   workspaces.c.id.label("ws_id"), workspaces.c.slug, workspaces.c.name)
            .join(workspaces, workspaces.c.id == api_keys.c.workspace_id)
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        ).first()
    if row is None:
        return None
    if row.last_used_at is None or now - float(row.last_used_at) >= LAST_USED_EVERY_SECONDS:
        with engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == row.id)
                .where(or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < now - LAST_USED_EVERY_SECONDS))
                .values(last_used_at=now)
            )
    return str(row.key_hash), Workspace(str(row.ws_id), str(row.slug), str(row.name), "viewer")


def role_in(engine: Engine, user_id: int, workspace_id: str) -> str | None:
    with engine.connect() as conn:
        return _role_of(conn, workspace_id, user_id)

