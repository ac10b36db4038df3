"""Server-rendered pages: sign-up, login, connect/approve, dashboard, devices."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import orjson
from markupsafe import Markup
from sqlalchemy.exc import IntegrityError
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from hm_proto.server import (
    ApiError,
    check_text,
    format_user_code,
    generate_token,
    is_uuid,
    normalize_user_code,
)

from . import store, team, views
from .bodies import MAX_SMALL_BODY_BYTES, parse_object, read_limited
from .limits import (
    CODE_GUESSES_PER_ACCOUNT,
    CODE_GUESSES_PER_ADDRESS,
    LOGINS_PER_ACCOUNT,
    LOGINS_PER_ADDRESS,
    SIGNUPS_PER_ADDRESS,
    GateBusy,
    Refusal,
    Reservation,
)
from .security import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    Session,
    csrf_ok,
    hash_password,
    verify_password,
)
from .state import client_address, cloud
from .validate import SLUG_RE

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["relative_time"] = views.relative_time
templates.env.filters["money"] = views.money
templates.env.filters["cost_cell"] = views.cost_cell
templates.env.filters["timestamp"] = views.timestamp

RESERVED_SLUGS = {
    "signup",
    "login",
    "logout",
    "connect",
    "v1",
    "static",
    "healthz",
    "settings",
    "api",
    "invite",
    "workspaces",
    "favicon.ico",
    "charts.css",
}
CODE_NOT_FOUND = (
    "Code not found — it may have expired (codes last 10 minutes). "
    "Run `halton-meter cloud connect` again for a fresh code."
)
CODE_CANCELLED = (
    "This pairing was cancelled on the machine (Ctrl-C in `halton-meter cloud connect`), "
    "so it cannot be approved. Run `halton-meter cloud connect` again for a fresh code."
)


async def _missing_code(
    request: Request, code: str | None, ctx: dict[str, Any], as_json: bool = False
) -> Response:
    """The page (or JSON error) for a code that is not pending: cancelled, or not found."""
    state = cloud(request)
    if code and bool(await state.db(store.cancelled_pairing, code, time.time())):
        if as_json:
            raise ApiError(410, "pairing_cancelled", CODE_CANCELLED)
        return render(
            request,
            "connect_missing.html",
            {**ctx, "heading": "Pairing cancelled", "message": CODE_CANCELLED},
            status=410,
        )
    if as_json:
        raise ApiError(404, "code_not_found", CODE_NOT_FOUND)
    return render(request, "connect_missing.html", {**ctx, "message": CODE_NOT_FOUND}, status=404)
MAX_RANGE_DAYS = 366
MAX_WORKSPACE_NAME = 200  # workspaces.name
EARLIEST_DATE = date(1970, 1, 1)
SIGNUP_REFUSED = (
    "This email or workspace name cannot be used: if you already have an account, "
    "sign in instead; otherwise choose another workspace name."
)


# -- session plumbing ----------------------------------------------------------------


def session_of(request: Request) -> Session:
    if "hm_session" not in request.scope:
        request.scope["hm_session"] = cloud(request).sessions.load(
            request.cookies.get(SESSION_COOKIE)
        )
    session: Session = request.scope["hm_session"]
    return session


def _with_cookie(request: Request, response: Response) -> Response:
    """Set the session cookie when a GET starts a session, or a checked form changed it.

    Never on any other POST: a cross-site form post arrives without the
    victim's (SameSite=Lax) cookie, so its anonymous session would overwrite
    theirs and sign them out.
    """
    session = session_of(request)
    if session.changed or (session.fresh and request.method in ("GET", "HEAD")):
        response.set_cookie(
            SESSION_COOKIE,
            cloud(request).sessions.dump(session),
            max_age=SESSION_MAX_AGE,
            httponly=True,
            samesite="lax",
            secure=cloud(request).app_url.startswith("https://"),
            path="/",
        )
    return response


async def _sign_in(request: Request, user_id: int | None) -> None:
    """Change who is signed in; a new CSRF token each time (no fixation)."""
    session = session_of(request)
    session.user_id = user_id
    session.epoch = 0 if user_id is None else await cloud(request).db(store.session_epoch, user_id)
    session.csrf = secrets.token_bytes(24).hex()
    session.changed = True


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
) -> Response:
    ctx = {"session": session_of(request), "csrf": session_of(request).csrf, "user_email": None}
    ctx.update(context or {})
    response = templates.TemplateResponse(request, name, ctx, status_code=status)
    return _with_cookie(request, response)


def redirect(request: Request, url: str) -> Response:
    return _with_cookie(request, RedirectResponse(url, status_code=303))


def _safe_next(target: str | None, default: str) -> str:
    """Only same-site paths: never redirect a sign-in to another host."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or urlsplit(target).netloc
    ):
        return default
    return target


def _login_redirect(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(request, f"/login?next={quote(here, safe='')}")


async def _form(request: Request) -> dict[str, str]:
    """The url-encoded form of a page (all our forms are), read within a size limit."""
    raw = await read_limited(
        request.stream(), request.headers.get("content-length"), MAX_SMALL_BODY_BYTES
    )
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(
            400, "invalid_request", "The form could not be read: reload the page and try again"
        ) from exc
    return form_fields(dict(pairs))


def form_fields(form: dict[str, str]) -> dict[str, str]:
    """``form`` if no value carries control characters (PostgreSQL refuses NUL: never a 500)."""
    for name, value in form.items():
        check_text(value, name[:40], MAX_SMALL_BODY_BYTES)
    return form


def _csrf_failed(request: Request) -> Response:
    return render(
        request,
        "error.html",
        {
            "title": "Form expired",
            "message": "This form expired or came from another site. Go back, reload the page and try again.",
        },
        status=403,
    )


async def _user(request: Request) -> tuple[int, str] | None:
    session = session_of(request)
    if session.user_id is None:
        return None
    email = await cloud(request).db(store.user_email, session.user_id)
    if not email or await cloud(request).db(store.session_epoch, session.user_id) != session.epoch:
        return None  # the account is gone, or it signed out (everywhere) since this cookie
    return session.user_id, email


class Member(NamedTuple):
    """The signed-in user on a workspace page; unpacks as (user id, email, workspace, their workspaces)."""

    uid: int
    email: str
    ws: store.Workspace
    mine: list[store.Workspace]

    def ctx(self, **more: Any) -> dict[str, Any]:
        """A template context with the page chrome (account, workspace, switcher) and ``more``."""
        return {"user_email": self.email, "workspace": self.ws, "workspaces": self.mine, **more}


async def signed_in(request: Request) -> tuple[int, str, list[store.Workspace]] | Response:
    """(user id, email, their workspaces) of the signed-in user, or the redirect to /login."""
    user = await _user(request)
    if user is None:
        return _login_redirect(request)
    return user[0], user[1], await cloud(request).db(store.user_workspaces, user[0])


async def member_page(request: Request, action: str = "view_dashboard", refusal: str = "") -> Member | Response:
    """The signed-in user and the workspace of the URL when their role may do ``action``
    (team.PERMISSIONS), or the response to send instead: the redirect to /login, a 404 for a
    workspace they do not belong to, a 403 saying ``refusal``."""
    found = await signed_in(request)
    if isinstance(found, Response):
        return found
    uid, email, mine = found
    last = await cloud(request).db(store.last_workspace, uid)
    slug = request.path_params["workspace"]
    ws = next((w for w in mine if w.slug == slug), None)
    if ws is None:
        # Same answer whether the workspace exists or not: no probing.
        return render(
            request,
            "error.html",
            {
                "title": "Workspace not found",
                "message": f"There is no workspace '{slug}' that you belong to.",
                "user_email": email,
                "workspaces": mine,
            },
            status=404,
        )
    if request.method == "GET" and ws.id != last:  # `/` opens the workspace used last
        await cloud(request).db(store.remember_workspace, uid, ws.id)
    if not team.can(ws.role, action):
        return forbidden(request, email, refusal or "Your role in this workspace does not allow this.", mine)
    return Member(uid, email, ws, mine)


# -- sign-up, login, logout --------------------------------------------------------


def slug_from_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")[:40]


async def home(request: Request) -> Response:
    user = await _user(request)
    if user is None:
        return redirect(request, "/login")
    mine = await cloud(request).db(store.user_workspaces, user[0])
    last = await cloud(request).db(store.last_workspace, user[0])
    chosen = next((w for w in mine if w.id == last), mine[0] if mine else None)
    return redirect(request, f"/{chosen.slug}/" if chosen else "/workspaces/new")


async def signup(request: Request) -> Response:
    nxt = request.query_params.get("next")
    if request.method == "GET":
        return render(request, "signup.html", {"next": nxt, "form": {}, "approving": _code_in_next(nxt)})
    form = await _form(request)
    if not csrf_ok(session_of(request), form.get("csrf_token")):
        return _csrf_failed(request)
    email = form.get("email", "").strip().lower()
    password = form.get("password", "")
    ws_name = form.get("workspace", "").strip() or email.split("@")[0]
    slug = slug_from_name(ws_name)
    error = None
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email) or len(email) > 320:
        error = "Enter an email address like name@example.com."
    elif len(password) < 8:
        error = "Choose a password of at least 8 characters."
    elif len(slug) < 2 or slug in RESERVED_SLUGS:
        error = "Choose a workspace name of at least two letters or digits (not a reserved word)."
    elif len(ws_name) > MAX_WORKSPACE_NAME:  # the column's length: PostgreSQL refuses more (a 500)
        error = f"Choose a workspace name of at most {MAX_WORKSPACE_NAME} characters."
    page = {"next": nxt, "form": {"email": email, "workspace": ws_name[:MAX_WORKSPACE_NAME]}}
    if error is not None:
        return render(request, "signup.html", {**page, "error": error}, status=400)
    state = cloud(request)
    address = client_address(request)
    try:
        async with state.password_gate.admit(address):
            counted = await state.reserve([(SIGNUPS_PER_ADDRESS, address)])
            if isinstance(counted, Refusal):
                message = f"Too many sign-ups from this address: wait {counted.retry_after} seconds and try again."
                return _refused(request, "signup.html", {**page, "error": message}, 429, counted.retry_after)
            pw_hash = await state.password_gate.hash(hash_password, password)
    except GateBusy as busy:
        return _refused(request, "signup.html", {**page, "error": _busy_message(busy)}, *_busy_status(busy))
    try:
        user_id, ws = await state.db(store.create_user, email, pw_hash, slug, ws_name, time.time())
    except store.SignupError:
        # One answer for a known email and a taken workspace name: the page
        # does not say which (docs/security.md, "Sign-up").
        return render(request, "signup.html", {**page, "error": SIGNUP_REFUSED}, status=400)
    await _sign_in(request, user_id)
    return redirect(request, _safe_next(nxt, f"/{ws.slug}/"))


def _code_in_next(nxt: str | None) -> str | None:
    """The pairing code a sign-in leads to approving (``next=/connect?code=…``), if any."""
    if not nxt:
        return None
    parts = urlsplit(nxt)
    if parts.path != "/connect":
        return None
    typed = dict(parse_qsl(parts.query)).get("code", "")
    code = normalize_user_code(typed) if len(typed) <= 64 else None
    return format_user_code(code) if code else None


async def login(request: Request) -> Response:
    nxt = request.query_params.get("next")
    if request.method == "GET":
        return render(request, "login.html", {"next": nxt, "form": {}, "approving": _code_in_next(nxt)})
    form = await _form(request)
    if not csrf_ok(session_of(request), form.get("csrf_token")):
        return _csrf_failed(request)
    email = form.get("email", "").strip().lower()
    state = cloud(request)
    address = client_address(request)
    page = {"next": nxt, "approving": _code_in_next(nxt), "form": {"email": email}}
    try:
        async with state.password_gate.admit(address):
            # Counted before argon2 runs: concurrent guesses cannot pass the limit.
            counted = await state.reserve([(LOGINS_PER_ACCOUNT, email), (LOGINS_PER_ADDRESS, address)])
            if isinstance(counted, Refusal):
                who = f"for {email}" if counted.limit is LOGINS_PER_ACCOUNT else "from this address"
                message = f"Too many wrong passwords {who}: wait {counted.retry_after} seconds and try again."
                return _refused(request, "login.html", {**page, "error": message}, 429, counted.retry_after)
            found = await state.db(store.find_user, email)
            ok = await state.password_gate.hash(
                verify_password, found[1] if found else None, form.get("password", "")
            )
    except GateBusy as busy:
        return _refused(request, "login.html", {**page, "error": _busy_message(busy)}, *_busy_status(busy))
    if not ok or found is None:
        return render(request, "login.html", {**page, "error": "Wrong email or password."}, status=400)
    await state.release(counted)  # the right password is not a guess
    await _sign_in(request, found[0])
    return redirect(request, _safe_next(nxt, "/"))


def _busy_message(busy: GateBusy) -> str:
    if busy.per_address:
        return "Too many sign-ins in progress from this address: wait a few seconds and try again."
    return "The server is busy checking passwords: wait a few seconds and try again."


def _busy_status(busy: GateBusy) -> tuple[int, int]:
    """(status, Retry-After seconds) for a refusal of the password gate."""
    return (429, 2) if busy.per_address else (503, 5)


def _refused(
    request: Request, template: str, context: dict[str, Any], status: int, retry_after: int
) -> Response:
    response = render(request, template, context, status=status)
    response.headers["Retry-After"] = str(retry_after)
    return response


async def logout(request: Request) -> Response:
    if request.method == "GET":
        user = await _user(request)
        return render(request, "logout.html", {"user_email": user[1] if user else None})
    form = await _form(request)
    if not csrf_ok(session_of(request), form.get("csrf_token")):
        return _csrf_failed(request)
    user = await _user(request)
    if user is not None:
        await cloud(request).db(store.bump_session_epoch, user[0])  # copies of the cookie die too
    await _sign_in(request, None)
    return redirect(request, "/login")


# -- connect and approve ---------------------------------------------------------


async def _count_code_guess(request: Request, user_id: int) -> Reservation | Refusal:
    """Count a pairing-code guess (per account and per address) before the code is looked up."""
    return await cloud(request).reserve(
        [(CODE_GUESSES_PER_ACCOUNT, str(user_id)), (CODE_GUESSES_PER_ADDRESS, client_address(request))]
    )


def _rate_limited_page(request: Request, retry_after: int, as_json: bool) -> Response:
    detail = f"Too many wrong pairing codes: wait {retry_after} seconds and check the code in your terminal"
    headers = {"Retry-After": str(retry_after)}
    if as_json:
        return Response(
            orjson.dumps({"error": "rate_limited", "detail": detail}),
            429,
            headers,
            "application/json",
        )
    response = render(
        request, "error.html", {"title": "Too many attempts", "message": detail + "."}, status=429
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


async def connect(request: Request) -> Response:
    found = await signed_in(request)
    if isinstance(found, Response):
        return found
    user_id, email, everywhere = found
    state = cloud(request)
    mine = [w for w in everywhere if team.can(w.role, "pair_device")]
    ctx: dict[str, Any] = {"user_email": email, "workspaces": everywhere, "pairable": mine,
                           "viewer_only": bool(everywhere) and not mine}
    typed = request.query_params.get("code")
    if typed is None:
        return render(request, "connect_enter.html", ctx)
    counted = await _count_code_guess(request, user_id)
    if isinstance(counted, Refusal):
        return _rate_limited_page(request, counted.retry_after, as_json=False)
    code = normalize_user_code(typed)
    pairing = await state.db(store.pending_pairing, code, time.time()) if code else None
    if pairing is None:
        return await _missing_code(request, code, {**ctx, "typed": typed})
    await state.release(counted)  # a live code is not a wrong guess
    hint = pairing["workspace_hint"]
    selected = hint if any(w.slug == hint for w in mine) else (mine[0].slug if mine else None)
    return render(
        request,
        "connect.html",
        {
            **ctx,
            "pairing": pairing,
            "code": format_user_code(pairing["user_code"]),
            "selected": selected,
        },
    )


async def approve(request: Request) -> Response:
    """POST /v1/pairing/approve: a form post from /connect (or JSON with the CSRF token)."""
    state = cloud(request)
    as_json = request.headers.get("content-type", "").startswith("application/json")
    if as_json:
        raw = await read_limited(
            request.stream(), request.headers.get("content-length"), MAX_SMALL_BODY_BYTES
        )
        data = parse_object(raw)
        form = form_fields({k: v for k, v in data.items() if isinstance(v, str)})
        form.setdefault("csrf_token", request.headers.get("x-csrf-token", ""))
    else:
        form = await _form(request)
    user = await _user(request)
    if user is None:
        if as_json:
            raise ApiError(401, "login_required", "Sign in at /login first, then approve the code")
        return redirect(request, "/login")
    if not csrf_ok(session_of(request), form.get("csrf_token")):
        if as_json:
            raise ApiError(
                403, "csrf_failed", "Missing or wrong CSRF token: reload /connect and try again"
            )
        return _csrf_failed(request)
    user_id, email = user
    for name in ("user_code", "workspace"):
        if not form.get(name):
            if as_json:
                raise ApiError(422, "missing_field", f"Field required: {name}")
            return render(
                request,
                "error.html",
                {
                    "title": "Missing field",
                    "message": f"Field required: {name}. Go back and try again.",
                },
                status=422,
            )
    # Counted before the code is looked up: concurrent guesses cannot pass the limit.
    counted = await _count_code_guess(request, user_id)
    if isinstance(counted, Refusal):
        return _rate_limited_page(request, counted.retry_after, as_json)
    code = normalize_user_code(form["user_code"])
    now = time.time()
    pairing = await state.db(store.pending_pairing, code, now) if code else None
    if pairing is None:
        return await _missing_code(
            request, code, {"typed": form["user_code"], "user_email": email}, as_json
        )
    await state.release(counted)  # a live code is not a wrong guess
    ws = await state.db(store.member_workspace, user_id, form["workspace"])
    if ws is not None and not team.can(ws.role, "pair_device"):
        message = f"Viewers cannot pair machines into '{ws.slug}': ask an admin for the member role."
        if as_json:
            raise ApiError(403, "forbidden", message)
        return render(request, "error.html", {"title": "Not allowed", "message": message, "user_email": email},
                      status=403)
    if ws is None:
        if as_json:
            raise ApiError(
                403, "forbidden", f"You are not a member of workspace '{form['workspace']}'"
            )
        return render(
            request,
            "error.html",
            {
                "title": "Not your workspace",
                "message": f"You are not a member of workspace '{form['workspace']}'.",
            },
            status=403,
        )
    code_hash = pairing["device_code_hash"]
    decision = form.get("decision", "approve")
    if decision == "deny":
        done = await state.db(store.deny_pairing, code_hash, now)
    else:
        decision = "approve"
        try:
            try:
                done = await state.db(
                    store.approve_pairing, code_hash, ws, generate_token(secrets.token_bytes), now, user_id,
                    team.can(ws.role, "revoke_any_device"),
                )
            except IntegrityError:  # the same machine approved twice at once: the second refreshes the first
                done = await state.db(
                    store.approve_pairing, code_hash, ws, generate_token(secrets.token_bytes), now, user_id,
                    team.can(ws.role, "revoke_any_device"),
                )
        except store.PairingRefused as exc:
            if as_json:
                raise ApiError(403, "forbidden", str(exc)) from None
            return render(request, "error.html", {"title": "Not allowed", "message": str(exc), "user_email": email},
                          status=403)
        if done:
            await state.db(team.record, ws.id, email, "device.approve",
                           f"{pairing['hostname']} ({pairing['machine_id']})", client_address(request), now)
    if not done:  # cancelled (or expired) while the page was open
        return await _missing_code(request, code, {"user_email": email}, as_json)
    from .metrics import PAIRINGS

    PAIRINGS.labels("approved" if decision == "approve" else "denied").inc()
    await state.pairing_changed(code_hash)
    if as_json:
        return Response(
            orjson.dumps({"approved": decision == "approve", "workspace": ws.slug}),
            200,
            media_type="application/json",
        )
    # Post/redirect/get: reloading the result page must not post the form again.
    note = state.sessions.note(
        {"decision": decision, "slug": ws.slug, "name": ws.name, "hostname": str(pairing["hostname"])}
    )
    return redirect(request, f"/connect/done?r={quote(note, safe='')}")


async def connect_done(request: Request) -> Response:
    """GET /connect/done: the result of an approval (see approve)."""
    user = await _user(request)
    note = cloud(request).sessions.read_note(request.query_params.get("r"))
    if note is None:
        return render(
            request,
            "error.html",
            {
                "title": "Link expired",
                "message": "This confirmation is no longer available. Check the terminal, "
                "or the workspace's devices page.",
                "user_email": user[1] if user else None,
            },
            status=404,
        )
    return render(
        request,
        "connect_done.html",
        {
            "user_email": user[1] if user else None,
            "decision": note.get("decision"),
            "workspace": {"slug": note.get("slug", ""), "name": note.get("name", "")},
            "pairing": {"hostname": note.get("hostname", "")},
        },
    )


# -- workspace pages -------------------------------------------------------------------


def _date_range(request: Request) -> tuple[str, str, str | None]:
    today = datetime.now(UTC).date()
    default = ((today - timedelta(days=29)).isoformat(), today.isoformat())
    raw_from = request.query_params.get("from_date") or default[0]
    raw_to = request.query_params.get("to_date") or default[1]
    try:
        start, end = date.fromisoformat(raw_from), date.fromisoformat(raw_to)
    except ValueError:
        return (*default, "Dates must look like 2026-11-24; showing the last 30 days.")
    if start > end:
        return (*default, "The start date is after the end date; showing the last 30 days.")
    if start < EARLIEST_DATE:  # the previous period (for the change) must still be a date
        return (*default, f"Dates start at {EARLIEST_DATE.isoformat()}; showing the last 30 days.")
    if (end - start).days >= MAX_RANGE_DAYS:
        start = end - timedelta(days=MAX_RANGE_DAYS - 1)
        return (
            start.isoformat(),
            end.isoformat(),
            "Ranges are limited to 366 days; showing the last 366 days of it.",
        )
    return start.isoformat(), end.isoformat(), None


async def dashboard(request: Request) -> Response:
    found = await member_page(request)
    if isinstance(found, Response):
        return found
    _uid, email, ws, mine = found
    from_date, to_date, range_error = _date_range(request)
    state = cloud(request)
    slicing = views.read_slicing(request.query_params)
    days = (date.fromisoformat(to_date) - date.fromisoformat(from_date)).days + 1
    prev_to = date.fromisoformat(from_date) - timedelta(days=1)
    prev_from = prev_to - timedelta(days=days - 1)
    sums = await state.db(store.dashboard_sums, ws.id, from_date, to_date, prev_from.isoformat(),
                          prev_to.isoformat(), slicing.group, slicing.chart, slicing.filters)
    groups = sums["groups"]
    base = f"/{ws.slug}/?"
    keep = {"from_date": from_date, "to_date": to_date}
    for name in ("split", "member", "person", "machine", "model", "provider"):
        views.sort_groups(groups[name], slicing.sort)  # biggest spend first by default, like `report`
        groups[name] = views.top_groups(groups[name])
    for g in groups["split"]:
        if "href" not in g:  # not the summed rest
            g["href"] = base + urlencode(keep | slicing.filter_link(g["key"]))
    for name in ("member", "person", "machine", "model", "provider"):
        for g in groups[name]:  # each row filters the whole page to it
            if "href" not in g:
                g["href"] = base + urlencode(keep | slicing.params(**{name: g["key"] or views.NONE_VALUE}))
    chips = [(text, base + urlencode(keep | params)) for text, params in slicing.chips()]
    total = {
        name: sum(g[name] for g in groups["day"])
        for name in ("rows", "nanos", "unknown", "no_usage", "errors", "input_tokens", "output_tokens")
    }
    prev_nanos = sums["prev_nanos"]
    saved, cached_tokens, unpriced_cache = views.cache_savings(sums["cache_reads"])
    per_series = sums["per_series"]
    from .budgets import chart_line

    line = None if slicing.filters else await state.db(chart_line, ws.id)
    by = dict(views.CHART_SPLITS)[slicing.chart].lower()
    return render(
        request,
        "dashboard.html",
        {
            "user_email": email,
            "workspace": ws,
            "workspaces": mine,
            "from_date": from_date,
            "to_date": to_date,
            "range_error": " ".join(filter(None, [range_error, *slicing.problems])) or None,
            "groups": groups,
            "slicing": slicing,
            "group_choices": views.GROUP_CHOICES,
            "group_label": dict(views.GROUP_CHOICES).get(slicing.group, f"Tag {slicing.group[4:]}"),
            "chips": chips,
            "hidden_filters": {k: v for k, v in slicing.params().items() if k not in ("group", "tag_key")},
            "total": total,
            "change": views.change_text(total["nanos"], prev_nanos, days),
            "previous": {"from": prev_from.isoformat(), "to": prev_to.isoformat(),
                         "href": base + urlencode(slicing.params() | {"from_date": prev_from.isoformat(),
                                                                      "to_date": prev_to.isoformat()})},
            "saved": saved, "cached_tokens": cached_tokens, "unpriced_cache": unpriced_cache,
            "chart_links": [(value, label, base + urlencode(keep | slicing.params(chart=value)))
                            for value, label in views.CHART_SPLITS],
            "sort_links": {value: base + urlencode(keep | slicing.params(sort=value)) for value in views.SORTS},
            "csv_href": f"/{ws.slug}/spend.csv?" + urlencode(keep | slicing.params()),
            "chart_narrow": Markup(views.cost_chart(per_series, from_date, to_date, by, line, width=360)),
            "chart_wide": Markup(views.cost_chart(per_series, from_date, to_date, by, line, width=880)),
        },
    )


async def spend_csv(request: Request) -> Response:
    """GET /{workspace}/spend.csv: the dashboard's current view (range, filters, chart split) per day."""
    found = await member_page(request)
    if isinstance(found, Response):
        return found
    _uid, _email, ws, _mine = found
    from_date, to_date, _problem = _date_range(request)
    slicing = views.read_slicing(request.query_params)
    rows = await cloud(request).db(store.spend_by_day_and, ws.id, from_date, to_date, slicing.chart,
                                   slicing.filters)
    from .api import usage_csv

    columns = ("date", "key", "label", "rows", "cost_usd", "unknown_price_rows", "no_usage_rows", "error_rows")
    name = f"spend-{ws.slug}-{from_date}-{to_date}-by-{slicing.chart}.csv"
    return Response(usage_csv(rows, columns), 200, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def devices_page(request: Request) -> Response:
    found = await member_page(request)
    if isinstance(found, Response):
        return found
    uid, email, ws, mine = found
    devices = await cloud(request).db(store.list_devices, ws.id)
    for d in devices:
        d["can_revoke"] = _may_revoke(ws.role, uid, d)
    revoked_id = request.query_params.get("revoked")
    revoked = next((d for d in devices if str(d["id"]) == revoked_id and d["revoked_at"]), None)
    return render(request, "devices.html", found.ctx(devices=devices, now=time.time(), revoked=revoked))


def _may_revoke(role: str, user_id: int, device: dict[str, Any]) -> bool:
    """Admins revoke any device; members their own (the ones they approved)."""
    own = device.get("approved_by") == user_id
    return team.can(role, "revoke_any_device") or (own and team.can(role, "revoke_own_device"))


def forbidden(request: Request, email: str, message: str, mine: list[store.Workspace] | None = None) -> Response:
    return render(request, "error.html", {"title": "Not allowed", "message": message, "user_email": email,
                                          "workspaces": mine or []}, status=403)


async def revoke_device(request: Request) -> Response:
    found = await member_page(request)
    if isinstance(found, Response):
        return found
    uid, email, ws, mine = found
    state = cloud(request)
    device_id = request.path_params["device_id"]
    device = await state.db(store.get_device, ws.id, device_id) if is_uuid(device_id) else None
    if device is None:
        return render(
            request,
            "error.html",
            {
                "title": "Device not found",
                "message": "No such device in this workspace.",
                "user_email": email,
            },
            status=404,
        )
    if not _may_revoke(ws.role, uid, device):
        return forbidden(request, email, "Only owners and admins revoke other people's devices; "
                         "you can revoke the ones you approved.", mine)
    if request.method == "GET":
        return render(request, "revoke_confirm.html", found.ctx(device=device))
    form = await _form(request)
    if not csrf_ok(session_of(request), form.get("csrf_token")):
        return _csrf_failed(request)
    await state.db(store.revoke_device, ws.id, device["id"], time.time())
    await state.db(team.record, ws.id, email, "device.revoke", f"{device['hostname']} ({device['machine_id']})",
                   client_address(request), time.time())
    return redirect(request, f"/{ws.slug}/settings/devices?revoked={quote(str(device['id']), safe='')}")


_FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#2f5bd3"/>'
    b'<path d="M4 12V4h2v3h4V4h2v8h-2V9H6v3z" fill="#fff"/></svg>'
)


async def charts_css(request: Request) -> Response:
    """The chart styles of hm_charts (the same file the local HTML report inlines)."""
    from hm_charts import CSS

    return Response(CSS, 200, {"Cache-Control": "public, max-age=3600"}, media_type="text/css")


async def favicon(request: Request) -> Response:
    """Browsers ask for /favicon.ico on every page: answer instead of logging a 404."""
    return Response(
        _FAVICON, 200, {"Cache-Control": "public, max-age=86400"}, media_type="image/svg+xml"
    )


class _SlugConvertor(Convertor[str]):
    """A workspace path segment: only a slug, so /favicon.ico or /robots.txt is never a workspace."""

    regex = SLUG_RE.pattern

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("slug", _SlugConvertor())

routes = [
    Route("/", home, methods=["GET"]),
    Route("/signup", signup, methods=["GET", "POST"]),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["GET", "POST"]),
    Route("/connect", connect, methods=["GET"]),
    Route("/connect/done", connect_done, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/charts.css", charts_css, methods=["GET"]),
    Route("/v1/pairing/approve", approve, methods=["POST"]),
    Route("/{workspace:slug}/", dashboard, methods=["GET"]),
    Route("/{workspace:slug}/spend.csv", spend_csv, methods=["GET"]),
    Route("/{workspace:slug}/settings/devices", devices_page, methods=["GET"]),
    Route(
        "/{workspace:slug}/settings/devices/{device_id}/revoke", revoke_device, methods=["GET", "POST"]
    ),
]
