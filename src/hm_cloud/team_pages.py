"""The team pages: new workspace, members and invitations, the invitation link, audit log, API keys.

Every form is a CSRF-checked, size-bounded POST (pages._form) answered by
post/redirect/get, except where a secret is shown once (a new invitation
link, a new API key): those are rendered in the POST's answer so the secret
never sits in a URL, a log or the history.
"""

from __future__ import annotations

import logging
import re
import secrets
import smtplib
import time
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hm_proto.server import READ_KEY_PREFIX, generate_token, is_uuid

from . import store, team
from .budgets import send_message, smtp_settings
from .limits import (
    INVITATION_EMAILS_PER_ACCOUNT,
    INVITATION_EMAILS_PER_ADDRESS,
    INVITATION_GUESSES_PER_ADDRESS,
    SIGNUPS_PER_ADDRESS,
    GateBusy,
    Refusal,
)
from .pages import (  # also registers {:slug}
    RESERVED_SLUGS,
    _busy_message,
    _busy_status,
    _csrf_failed,
    _form,
    _refused,
    _sign_in,
    _user,
    forbidden,
    member_page,
    redirect,
    render,
    session_of,
    signed_in,
    slug_from_name,
)
from .retention import audit_days
from .security import csrf_ok, hash_password
from .state import client_address, cloud
from .validate import small_int

log = logging.getLogger("hm_cloud.team")

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
INVITE_TOKEN_BYTES = 32


def _email_ok(email: str) -> bool:
    return bool(_EMAIL.fullmatch(email)) and len(email) <= 320


# -- a new workspace ---------------------------------------------------------------------


async def new_workspace(request: Request) -> Response:
    found = await signed_in(request)
    if isinstance(found, Response):
        return found
    uid, email, mine = found
    state = cloud(request)
    ctx: dict[str, Any] = {"user_email": email, "workspaces": mine, "form": {}}
    if request.method == "GET":
        return render(request, "workspace_new.html", ctx)
    form = await _form(request)
    if not csrf_ok(session_of(request), form.get("csrf_token")):
        return _csrf_failed(request)
    name = form.get("name", "").strip()[:200]
    slug = slug_from_name(name)
    ctx["form"] = {"name": name}
    if len(slug) < 2 or slug in RESERVED_SLUGS:
        ctx["error"] = "Choose a name of at least two letters or digits (not a reserved word)."
        return render(request, "workspace_new.html", ctx, status=400)
    try:
        ws = await state.db(team.create_workspace, uid, email, slug, name, client_address(request), time.time())
    except store.SignupError as exc:
        ctx["error"] = str(exc)
        return render(request, "workspace_new.html", ctx, status=400)
    return redirect(request, f"/{ws.slug}/")


# -- members and invitations -------------------------------------------------------------


def _invite_link(request: Request, token: str) -> str:
    return f"{cloud(request).app_url}/invite/{token}"


def send_invitation(settings: dict[str, Any], to: str, workspace: str, role: str, link: str, by: str) -> bool:
    """E-mail an invitation link (the budgets module's SMTP settings)."""
    message = EmailMessage()
    message["Subject"] = f"[Halton Meter] {by} invited you to {workspace}"
    message["From"] = settings["from"]
    message["To"] = to
    message.set_content(
        f"{by} invited you to the Halton Meter workspace {workspace} as {role}.\n\n"
        f"Open this link within 7 days to join (it works once):\n{link}\n"
    )
    try:
        send_message(settings, message)
        return True
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("invitation e-mail to %s not sent: %s", to.split("@")[-1], exc)
        return False


async def members_page(request: Request) -> Response:
    found = await member_page(request)
    if isinstance(found, Response):
        return found
    uid, email, ws, mine = found
    state = cloud(request)
    address = client_address(request)
    ctx = found.ctx(me=uid)
    status = 200
    response_background = None
    if request.method == "POST":
        form = await _form(request)
        if not csrf_ok(session_of(request), form.get("csrf_token")):
            return _csrf_failed(request)
        action = form.get("action", "")
        now = time.time()
        try:
            if action == "invite":
                role = form.get("role", "member")
                to = form.get("email", "").strip().lower() or None
                if to is not None and not _email_ok(to):
                    raise team.TeamError("Enter an email address like name@example.com, or leave it empty.")
                token = secrets.token_urlsafe(INVITE_TOKEN_BYTES)
                await state.db(team.create_invitation, ws.id, uid, email, role, to, token, address, now)
                link = _invite_link(request, token)
                ctx["new_link"] = link
                ctx["new_role"] = role
                smtp = smtp_settings()
                if smtp and to:
                    # The server sends what anyone who signs up writes (a workspace name) to any
                    # address: bounded per account and per address, or it is a spam relay.
                    mail = await state.reserve([(INVITATION_EMAILS_PER_ACCOUNT, str(uid)),
                                                (INVITATION_EMAILS_PER_ADDRESS, address)])
                    if isinstance(mail, Refusal):
                        ctx["not_mailed"] = (f"Not e-mailed: too many invitation e-mails were sent from this "
                                             f"account or address; send the link yourself (or wait "
                                             f"{mail.retry_after} seconds).")
                    else:
                        ctx["mailed_to"] = to
                        response_background = BackgroundTask(send_invitation, smtp, to, ws.name, role, link, email)
            elif action == "revoke_invitation":
                if not team.can(ws.role, "revoke_invitation"):
                    raise PermissionError("Only owners and admins revoke invitations.")
                inv_id = form.get("invitation_id", "")
                if not (is_uuid(inv_id) and await state.db(team.revoke_invitation, ws.id, email, inv_id, address, now)):
                    raise team.TeamError("That invitation was already used, revoked or expired.")
                return redirect(request, f"/{ws.slug}/settings/members")
            elif action in ("role", "remove"):
                target = _int(form.get("user_id"))
                if action == "role":
                    await state.db(team.change_role, ws.id, uid, email, target, form.get("role", ""), address, now)
                    return redirect(request, f"/{ws.slug}/settings/members")
                await state.db(team.remove_member, ws.id, uid, email, target, address, now)
                if target == uid:
                    return redirect(request, "/")
                return redirect(request, f"/{ws.slug}/settings/members")
            else:
                raise team.TeamError("Unknown action: reload the page and try again.")
        except PermissionError as exc:
            return forbidden(request, email, str(exc), mine)
        except team.TeamError as exc:
            ctx["error"] = str(exc)
            status = 400
    now = time.time()
    ctx["members"] = await state.db(team.list_members, ws.id)
    ctx["admin"] = team.can(ws.role, "invite")
    ctx["owner"] = team.can(ws.role, "make_owner")
    ctx["roles"] = team.ROLES
    ctx["smtp"] = smtp_settings() is not None
    ctx["role_text"] = team.ROLE_TEXT
    ctx["invitations"] = await state.db(team.pending_invitations, ws.id, now) if ctx["admin"] else []
    ctx["now"] = now
    response = render(request, "members.html", ctx, status=status)
    response.background = response_background
    return response


def _int(value: str | None) -> int:
    number = small_int(value)
    if number is None:
        raise team.TeamError("That person is not a member of this workspace.")
    return number


# -- the invitation link ----------------------------------------------------------------------


async def invitation(request: Request) -> Response:
    state = cloud(request)
    token = request.path_params["token"]
    address = client_address(request)
    # Counted before the lookup (a wrong link is a guess), released for a live one.
    counted = await state.reserve([(INVITATION_GUESSES_PER_ADDRESS, address)])
    if isinstance(counted, Refusal):
        message = f"Too many invitation links tried from this address: wait {counted.retry_after} seconds."
        return _refused(request, "error.html", {"title": "Too many attempts", "message": message}, 429,
                        counted.retry_after)
    inv = await state.db(team.open_invitation, token, time.time()) if len(token) <= 100 else None
    user = await _user(request)
    ctx: dict[str, Any] = {"user_email": user[1] if user else None, "form": {}}
    if inv is None:
        return render(request, "error.html", {**ctx, "title": "Invitation not valid",
                                              "message": team.INVITATION_GONE}, status=404)
    await state.release(counted)
    ctx["invitation"] = inv
    ctx["here"] = f"/invite/{quote(token, safe='')}"
    if request.method == "GET":
        return render(request, "invite.html", ctx)
    form = await _form(request)
    if not csrf_ok(session_of(request), form.get("csrf_token")):
        return _csrf_failed(request)
    new_account = None
    if user is None:
        new_email = form.get("email", "").strip().lower()
        password = form.get("password", "")
        ctx["form"] = {"email": new_email}
        if not _email_ok(new_email):
            return render(request, "invite.html", {**ctx, "error": "Enter an email address like name@example.com."},
                          status=400)
        if len(password) < 8:
            return render(request, "invite.html", {**ctx, "error": "Choose a password of at least 8 characters."},
                          status=400)
        try:
            async with state.password_gate.admit(address):
                signup = await state.reserve([(SIGNUPS_PER_ADDRESS, address)])
                if isinstance(signup, Refusal):
                    message = f"Too many sign-ups from this address: wait {signup.retry_after} seconds and try again."
                    return _refused(request, "invite.html", {**ctx, "error": message}, 429, signup.retry_after)
                new_account = (new_email, await state.password_gate.hash(hash_password, password))
        except GateBusy as busy:
            return _refused(request, "invite.html", {**ctx, "error": _busy_message(busy)}, *_busy_status(busy))
    try:
        uid, ws, _joined = await state.db(team.accept_invitation, token, user[0] if user else None, new_account,
                                          address, time.time())
    except team.TeamError as exc:
        return render(request, "error.html", {**ctx, "title": "Invitation not valid", "message": str(exc)},
                      status=404)
    except store.SignupError as exc:
        return render(request, "invite.html", {**ctx, "error": str(exc)}, status=400)
    if user is None:
        await _sign_in(request, uid)
    return redirect(request, f"/{ws.slug}/")


# -- audit log ---------------------------------------------------------------------------------


async def audit_page(request: Request) -> Response:
    found = await member_page(request, "view_audit", "Only owners and admins see the audit log.")
    if isinstance(found, Response):
        return found
    before = small_int(request.query_params.get("before", ""))
    entries = await cloud(request).db(team.audit_entries, found.ws.id, before)
    older = entries[-1]["id"] if len(entries) == team.AUDIT_PAGE else None
    return render(request, "audit.html", found.ctx(entries=entries, older=older, audit_days=audit_days()))


# -- API keys ----------------------------------------------------------------------------------


async def api_keys_page(request: Request) -> Response:
    found = await member_page(request, "manage_api_keys", "Only owners and admins manage API keys.")
    if isinstance(found, Response):
        return found
    uid, email, ws, _mine = found
    state = cloud(request)
    ctx = found.ctx(base_url=state.app_url)
    status = 200
    if request.method == "POST":
        form = await _form(request)
        if not csrf_ok(session_of(request), form.get("csrf_token")):
            return _csrf_failed(request)
        now, address = time.time(), client_address(request)
        try:
            if form.get("action") == "revoke":
                key_id = form.get("key_id", "")
                if not (is_uuid(key_id) and await state.db(team.revoke_api_key, ws.id, email, key_id, address, now)):
                    raise team.TeamError("That key is already revoked.")
                return redirect(request, f"/{ws.slug}/settings/api-keys")
            name = form.get("name", "").strip()
            if not _KEY_NAME.fullmatch(name):
                raise team.TeamError("Name the key (letters, digits, spaces, . _ -; up to 64), e.g. grafana.")
            key = generate_token(secrets.token_bytes, READ_KEY_PREFIX)
            await state.db(team.create_api_key, ws.id, uid, email, name, key, address, now)
            ctx["new_key"], ctx["new_name"] = key, name
        except team.TeamError as exc:
            ctx["error"] = str(exc)
            status = 400
    ctx["keys"] = await state.db(team.list_api_keys, ws.id)
    ctx["now"] = time.time()
    return render(request, "api_keys.html", ctx, status=status)


routes = [
    Route("/workspaces/new", new_workspace, methods=["GET", "POST"]),
    Route("/invite/{token}", invitation, methods=["GET", "POST"]),
    Route("/{workspace:slug}/settings/members", members_page, methods=["GET", "POST"]),
    Route("/{workspace:slug}/settings/audit", audit_page, methods=["GET"]),
    Route("/{workspace:slug}/settings/api-keys", api_keys_page, methods=["GET", "POST"]),
]
