"""Opt-in request bodies in the cloud: accepted per workspace, encrypted per workspace, viewed by admins.

- Off by default on both sides: a machine uploads only with ``[capture] bodies =
  "sync"`` and only to a workspace whose owners or admins turned on "accept request
  bodies" (``/{workspace}/settings/retention``; whoami says ``accept_bodies``).
- ``POST /v1/requests/bodies`` (a machine's Bearer token): at most ``MAX_BODIES``
  bodies, ``MAX_UPLOAD_BYTES`` in all; idempotent by row id; a body whose row this
  machine has not synced is answered as ``unknown`` and not stored.
- Stored as one Fernet token per row under the workspace's data key (made on the
  first body), which is kept wrapped (Fernet) by the server's master key:
  ``HALTON_METER_CLOUD_MASTER_KEY`` (comma-separated, newest first) or the file
  named by ``HALTON_METER_CLOUD_MASTER_KEY_FILE``. Rotation: put the new key
  first, keep the old ones after it, run ``halton-meter-cloud rewrap-keys``, then
  drop the old ones. Without one, bodies are
  refused with 503 and the settings page says why.
- Only owners and admins see a body, on ``/{workspace}/requests/{id}``; each view is
  in the audit log. Turning the setting off stops accepting and offers to delete
  the stored bodies (audited).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hm_proto.server import ApiError, is_uuid

from . import team
from .bodies import BODIES_PATH, MAX_BODY_BYTES
from .db import request_bodies, usage_rows, workspace_keys, workspace_settings, workspaces
from .pages import Member, member_page, render
from .state import client_address, cloud
from .store import lock_row, write_transaction

log = logging.getLogger("hm_cloud.request_bodies")

MAX_BODIES = 16
MAX_UPLOAD_BYTES = MAX_BODY_BYTES
MAX_TEXT = 4 * 1024 * 1024  # one request or response text (the machine caps at body_max_kib)
MASTER_ENV = "HALTON_METER_CLOUD_MASTER_KEY"
MASTER_FILE_ENV = "HALTON_METER_CLOUD_MASTER_KEY_FILE"


class NoMasterKey(RuntimeError):
    """Bodies cannot be stored or read: the server has no master key."""


def _master() -> Any:
    from cryptography.fernet import Fernet, MultiFernet

    text = os.environ.get(MASTER_ENV, "")
    path = os.environ.get(MASTER_FILE_ENV)
    if not text and path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise NoMasterKey(f"cannot read {MASTER_FILE_ENV} {path}: {exc.strerror}") from None
    keys = [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]
    if not keys:
        raise NoMasterKey(f"the server has no master key: set {MASTER_ENV} or {MASTER_FILE_ENV} (docs/cloud.md)")
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError:
        raise NoMasterKey(f"{MASTER_ENV} is not a Fernet key (32 url-safe base64 bytes)") from None


def master_key_problem() -> str | None:
    try:
        _master()
    except NoMasterKey as exc:
        return str(exc)
    return None


def _data_key(conn: Connection, workspace_id: str, now: float, create: bool) -> Any:
    """The workspace's Fernet, its key unwrapped (re-wrapped under the newest master key)."""
    from cryptography.fernet import Fernet

    master = _master()
    wrapped = conn.execute(select(workspace_keys.c.wrapped_key)
                           .where(workspace_keys.c.workspace_id == workspace_id)).scalar()
    if wrapped is None:
        if not create:
            return None
        key = Fernet.generate_key()
        conn.execute(workspace_keys.insert().values(workspace_id=workspace_id,
                                                    wrapped_key=master.encrypt(key).decode(), created_at=now))
        return Fernet(key)
    return Fernet(_unwrap(master, wrapped))


_WRONG_MASTER = (f"{MASTER_ENV} cannot unwrap this workspace's data key: it was wrapped by an older master key; "
                 "list that key after the new one (comma-separated) and run `halton-meter-cloud rewrap-keys`")


def _unwrap(master: Any, wrapped: str) -> bytes:
    from cryptography.fernet import InvalidToken

    try:
        return bytes(master.decrypt(wrapped.encode()))
    except InvalidToken:
        raise NoMasterKey(_WRONG_MASTER) from None


def rewrap_keys(engine: Engine) -> int:
    """Re-wrap every workspace's data key under the newest master key (rotation); returns how many."""
    master = _master()
    with engine.begin() as conn:
        rows = conn.execute(select(workspace_keys.c.workspace_id, workspace_keys.c.wrapped_key)).all()
        for workspace_id, wrapped in rows:
            _unwrap(master, wrapped)  # one the listed keys cannot open: say which key is missing
            conn.execute(workspace_keys.update().where(workspace_keys.c.workspace_id == workspace_id)
                         .values(wrapped_key=master.rotate(wrapped.encode()).decode()))
    return len(rows)


def accepts(conn: Connection | Engine, workspace_id: str) -> bool:
    query = select(workspace_settings.c.accept_bodies).where(workspace_settings.c.workspace_id == workspace_id)
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return bool(c.execute(query).scalar())
    return bool(conn.execute(query).scalar())


def set_accept(engine: Engine, workspace_id: str, accept: bool, actor: str, address: str | None,
               now: float) -> None:
    with write_transaction(engine) as conn:
        lock_row(conn, workspaces, workspace_id)  # two first saves at once both INSERTed (PostgreSQL: a 500)
        updated = conn.execute(workspace_settings.update().where(workspace_settings.c.workspace_id == workspace_id)
                               .values(accept_bodies=accept, updated_at=now)).rowcount
        if not updated:
            conn.execute(workspace_settings.insert().values(workspace_id=workspace_id, accept_bodies=accept,
                                                            updated_at=now))
        team.audit(conn, workspace_id, actor, "bodies.accept" if accept else "bodies.refuse",
                   "accept request bodies: " + ("on" if accept else "off"), address, now)


def count_bodies(engine: Engine, workspace_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(request_bodies)
                                .where(request_bodies.c.workspace_id == workspace_id)).scalar() or 0)


def delete_bodies(engine: Engine, workspace_id: str, actor: str, address: str | None, now: float) -> int:
    with engine.begin() as conn:
        n = int(conn.execute(delete(request_bodies).where(request_bodies.c.workspace_id == workspace_id)).rowcount)
        team.audit(conn, workspace_id, actor, "bodies.delete", f"{n} stored bodies deleted", address, now)
    return n


def store_bodies(engine: Engine, workspace_id: str, machine_id: str, items: list[dict[str, Any]],
                 now: float) -> dict[str, Any]:
    """Store the bodies not stored yet; an id given twice in one upload counts once (then as a
    duplicate), and one that another upload stored meanwhile is a duplicate too (never a 500)."""
    from sqlalchemy.exc import IntegrityError

    try:
        return _store_bodies(engine, workspace_id, machine_id, items, now)
    except IntegrityError:  # a concurrent upload of the same row won: this pass sees it as stored
        return _store_bodies(engine, workspace_id, machine_id, items, now)


def _store_bodies(engine: Engine, workspace_id: str, machine_id: str, items: list[dict[str, Any]],
                  now: float) -> dict[str, Any]:
    with engine.begin() as conn:
        if not accepts(conn, workspace_id):
            raise ApiError(403, "bodies_not_accepted",
                           "This workspace does not accept request bodies: an owner or admin turns it on")
        ids = [i["id"] for i in items]
        known = {r[0] for r in conn.execute(select(usage_rows.c.id).where(
            usage_rows.c.workspace_id == workspace_id, usage_rows.c.machine_id == machine_id,
            usage_rows.c.id.in_(ids)))}
        have = {r[0] for r in conn.execute(select(request_bodies.c.id).where(
            request_bodies.c.workspace_id == workspace_id, request_bodies.c.id.in_(ids)))}
        fresh = list({i["id"]: i for i in reversed(items) if i["id"] in known and i["id"] not in have}.values())
        if fresh:
            import json

            fernet = _data_key(conn, workspace_id, now, create=True)
            conn.execute(request_bodies.insert(), [
                {"workspace_id": workspace_id, "id": i["id"], "machine_id": machine_id,
                 "truncated": bool(i["truncated"]), "received_at": now,
                 "ciphertext": fernet.encrypt(json.dumps(
                     {"request": i["request"], "response": i["response"]}).encode()).decode()}
                for i in fresh])
    return {"stored": len(fresh), "duplicates": len([i for i in ids if i in known]) - len(fresh),
            "unknown": [i for i in ids if i not in known]}


def read_body(engine: Engine, workspace_id: str, row_id: str, actor: str, address: str | None,
              now: float) -> dict[str, Any] | None:
    """The row and its body (decrypted), the view audited; None when there is no such row."""
    import json

    with engine.begin() as conn:
        row = conn.execute(select(usage_rows).where(usage_rows.c.workspace_id == workspace_id,
                                                    usage_rows.c.id == row_id)).first()
        if row is None:
            return None
        found = conn.execute(select(request_bodies.c.ciphertext, request_bodies.c.truncated).where(
            request_bodies.c.workspace_id == workspace_id, request_bodies.c.id == row_id)).first()
        body = None
        if found is not None:
            fernet = _data_key(conn, workspace_id, now, create=False)
            body = json.loads(_unwrap(fernet, found[0]))
            body["truncated"] = bool(found[1])
            team.audit(conn, workspace_id, actor, "body.view", f"request {row_id}", address, now)
    return {"row": dict(row._mapping), "body": body}


def parse_upload(raw: bytes) -> list[dict[str, Any]]:
    from .bodies import parse_object
    from .validate import field

    body = parse_object(raw)
    items = field(body, "bodies", list)
    if len(items) > MAX_BODIES:
        raise ApiError(413, "payload_too_large", f"At most {MAX_BODIES} bodies per upload: split it")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, "invalid_request", f"Invalid field: bodies[{n}] (expected an object)")
        rid, req, resp, cut = item.get("id"), item.get("request"), item.get("response"), item.get("truncated")
        if not isinstance(rid, str) or not is_uuid(rid):
            raise ApiError(400, "invalid_request", f"Invalid field: bodies[{n}].id (expected a UUID)")
        for name, text in (("request", req), ("response", resp)):
            if not isinstance(text, str) or len(text) > MAX_TEXT:
                raise ApiError(400, "invalid_request", f"Invalid field: bodies[{n}].{name} (expected a string)")
        if not isinstance(cut, bool):
            raise ApiError(400, "invalid_request", f"Invalid field: bodies[{n}].truncated (expected true or false)")
        out.append({"id": rid.lower(), "request": req, "response": resp, "truncated": cut})
    return out


async def bodies_upload(request: Request) -> Response:
    from .api import authed_device, json_response
    from .bodies import read_limited

    device = await authed_device(request)
    if master_key_problem() is not None:
        raise ApiError(503, "bodies_unavailable", "This server cannot store request bodies (no master key)")
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_UPLOAD_BYTES)
    items = parse_upload(raw)
    try:
        answer = await cloud(request).db(store_bodies, device.workspace.id, device.machine_id, items, time.time())
    except NoMasterKey:  # the server's key cannot open the workspace's: the operator's to fix, logged
        log.error("request bodies refused for workspace %s: %s", device.workspace.slug, _WRONG_MASTER)
        raise ApiError(503, "bodies_unavailable", "This server cannot store request bodies now "
                       "(its master key does not match): try again later") from None
    return json_response(answer)


async def _admin_page(request: Request) -> Member | Response:
    """The signed-in owner or admin and the workspace of the URL, or the 403/redirect to send."""
    return await member_page(request, "change_settings", "Only owners and admins see request bodies.")


async def request_page(request: Request) -> Response:
    found = await _admin_page(request)
    if isinstance(found, Response):
        return found
    _uid, email, ws, mine = found
    row_id = request.path_params["row_id"]
    state = cloud(request)
    try:
        got = await state.db(read_body, ws.id, row_id.lower(), email, client_address(request), time.time()) \
            if is_uuid(row_id) else None
        problem = None
    except NoMasterKey as exc:
        got, problem = None, str(exc)
    if got is None and problem is None:
        return render(request, "error.html", {"title": "No such request", "message": "No such request here.",
                                              "user_email": email, "workspaces": mine}, status=404)
    return render(request, "request.html", found.ctx(got=got, problem=problem))


def recent_with_bodies(engine: Engine, workspace_id: str, limit: int = 100) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(usage_rows.c.id, usage_rows.c.ts, usage_rows.c.model, usage_rows.c.cost_usd,
                   usage_rows.c.machine_id)
            .join(request_bodies, (request_bodies.c.workspace_id == usage_rows.c.workspace_id)
                  & (request_bodies.c.id == usage_rows.c.id))
            .where(usage_rows.c.workspace_id == workspace_id)
            .order_by(usage_rows.c.ts.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


async def requests_list(request: Request) -> Response:
    found = await _admin_page(request)
    if isinstance(found, Response):
        return found
    rows = await cloud(request).db(recent_with_bodies, found.ws.id)
    return render(request, "requests.html", found.ctx(rows=rows))


routes = [Route("/{workspace:slug}/requests", requests_list, methods=["GET"]),
          Route("/{workspace:slug}/requests/{row_id}", request_page, methods=["GET"])]
api_routes = [Route(BODIES_PATH, bodies_upload, methods=["POST"])]
