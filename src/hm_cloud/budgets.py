"""Workspace budgets: set by owners on /{workspace}/settings/budgets, alerted once per threshold.

A budget covers the whole workspace, one machine, one member (the OS user
attribution names) or one project, per UTC day, ISO week or month. After
accepted batches (at most once every 2 s per workspace, on a thread of its
own) the workspace's budgets are re-summed (``cost_nanos``,
exact in SQL) and every threshold newly crossed is recorded in
``workspace_budget_alerts`` — the primary key makes it once per budget,
period and threshold, across restarts and server processes — and then
sent, after the response, to the budget's webhook (Slack-compatible body)
and by e-mail to the workspace's owners when SMTP is configured
(``HALTON_METER_CLOUD_SMTP_URL=smtp://user:pass@host:port``,
``HALTON_METER_CLOUD_SMTP_FROM``; ``smtps://`` for TLS).

The cloud cannot block a call: machines upload after the fact. Blocking is
the machine's job (``action = "block"`` in the local config).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import smtplib
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, and_, delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import store
from .db import (
    memberships,
    users,
    workspace_budget_alerts,
    workspace_budgets,
    workspaces,
)
from .pages import (  # also registers {:slug}
    _csrf_failed,
    _form,
    member_page,
    redirect,
    render,
    session_of,
)
from .security import csrf_ok
from .state import cloud
from .store import lock_row, write_transaction

log = logging.getLogger("hm_cloud.budgets")

SCOPES = ("workspace", "machine", "member", "project")
SCOPE_DIMENSIONS = {"machine": "machine", "member": "os_user", "project": "project"}
"""The store dimension a scope filters by (a member budget is the OS user attribution names)."""
PERIODS = ("day", "week", "month")
MAX_BUDGETS = 50
NANOS = Decimal(1_000_000_000)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ATTEMPTS = 3
TIMEOUT_S = 5.0  # connect, and each read
TOTAL_S = 15.0  # one webhook attempt, from connect to the last byte read


class BudgetError(ValueError):
    """A budget form that cannot be saved; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    name: str
    scope_kind: str
    scope_value: str | None
    period: str
    limit_nanos: int
    thresholds: tuple[int, ...]
    webhook_url: str | None

    @property
    def limit_usd(self) -> Decimal:
        return Decimal(self.limit_nanos) / NANOS

    def scope_text(self) -> str:
        return "whole workspace" if self.scope_kind == "workspace" else f"{self.scope_kind} {self.scope_value}"


@dataclass(frozen=True, slots=True)
class Alert:
    budget: str
    budget_id: str
    workspace: str
    period: str
    period_kind: str
    threshold: int
    spend_usd: str
    limit_usd: str
    percent: float
    scope: dict[str, str | None]
    fired_at: str

    def text(self) -> str:
        what = "reached" if self.threshold >= 100 else f"at {self.threshold}%"
        return (f"Halton Meter budget {self.budget} ({self.workspace}) {what}: ${Decimal(self.spend_usd):,.2f} of "
                f"${Decimal(self.limit_usd):,.2f} this {self.period_kind} ({self.period}, "
                f"{self.scope['kind']}{' ' + str(self.scope['value']) if self.scope['value'] else ''}).")


# -- periods (UTC) and parsing -----------------------------------------------------------


def period_of(kind: str, today: date) -> tuple[str, date, date]:
    """(key, first day, last day) of the UTC day, ISO week or month containing ``today``."""
    if kind == "day":
        return today.isoformat(), today, today
    if kind == "week":
        start = today - timedelta(days=today.weekday())
        year, week, _ = today.isocalendar()
        return f"{year}-W{week:02d}", start, start + timedelta(days=6)
    start = today.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return f"{today.year}-{today.month:02d}", start, end


def parse_form(form: dict[str, str]) -> dict[str, Any]:
    """The add-budget form as table values; BudgetError names the field to fix."""
    name = form.get("name", "").strip()
    if not _NAME.fullmatch(name):
        raise BudgetError("Name: 1-64 letters, digits, '.', '_' or '-'.")
    kind = form.get("scope_kind", "workspace")
    if kind not in SCOPES:
        raise BudgetError("Scope: whole workspace, a machine, a member or a project.")
    value = form.get("scope_value", "").strip() or None
    if kind != "workspace" and (value is None or len(value) > 200):
        raise BudgetError(f"Scope: name the {kind} (at most 200 characters).")
    period = form.get("period", "month")
    if period not in PERIODS:
        raise BudgetError("Period: day, week or month.")
    try:
        limit = Decimal(form.get("limit_usd", "").strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        limit = Decimal(0)
    if not limit.is_finite() or not Decimal("0.01") <= limit <= Decimal(1_000_000_000):
        raise BudgetError("Limit: an amount of US dollars from 0.01, like 250 or 12.50.")
    try:
        thresholds = sorted({int(t) for t in form.get("thresholds", "50,80,100").replace(" ", "").split(",") if t})
    except ValueError:
        thresholds = []
    if not thresholds or len(thresholds) > 20 or not all(1 <= t <= 1000 for t in thresholds):
        raise BudgetError("Thresholds: percentages of the limit between 1 and 1000, like 50, 80, 100.")
    webhook = form.get("webhook_url", "").strip() or None
    if webhook is not None and (not re.fullmatch(r"https?://[^\s/]+\S*", webhook) or len(webhook) > 2000):
        raise BudgetError("Webhook: an http(s) URL, like a Slack incoming webhook, or nothing.")
    return {"name": name, "scope_kind": kind, "scope_value": value if kind != "workspace" else None,
            "period": period, "limit_nanos": int(limit * NANOS), "thresholds": ",".join(map(str, thresholds)),
            "webhook_url": webhook}


# -- store ----------------------------------------------------------------------------------


def _budget(row: Any) -> Budget:
    return Budget(str(row.id), str(row.name), str(row.scope_kind), row.scope_value, str(row.period),
                  int(row.limit_nanos), tuple(int(t) for t in str(row.thresholds).split(",") if t),
                  row.webhook_url)


def list_budgets(engine: Engine, workspace_id: str) -> list[Budget]:
    with engine.connect() as conn:
        rows = conn.execute(select(workspace_budgets).where(workspace_budgets.c.workspace_id == workspace_id)
                            .order_by(workspace_budgets.c.name)).all()
    return [_budget(r) for r in rows]


def add_budget(engine: Engine, workspace_id: str, values: dict[str, Any], now: float) -> None:
    with write_transaction(engine) as conn:  # the count and the insert as one (concurrent adds passed 50)
        lock_row(conn, workspaces, workspace_id)
        count = conn.execute(select(func.count()).select_from(workspace_budgets)
                             .where(workspace_budgets.c.workspace_id == workspace_id)).scalar_one()
        if count >= MAX_BUDGETS:
            raise BudgetError(f"A workspace has at most {MAX_BUDGETS} budgets: delete one first.")
        try:
            conn.execute(insert(workspace_budgets).values(id=str(uuid.uuid4()), workspace_id=workspace_id,
                                                          created_at=now, **values))
        except IntegrityError:
            raise BudgetError(f"There is already a budget named {values['name']}.") from None


def delete_budget(engine: Engine, workspace_id: str, budget_id: str) -> None:
    with engine.begin() as conn:
        gone = conn.execute(delete(workspace_budgets).where(and_(workspace_budgets.c.id == budget_id,
                                                                 workspace_budgets.c.workspace_id == workspace_id)))
        if gone.rowcount:  # only this workspace's budget: another's alerts stay fired (no repeat)
            conn.execute(delete(workspace_budget_alerts).where(workspace_budget_alerts.c.budget_id == budget_id))


def is_owner(engine: Engine, user_id: int, workspace_id: str) -> bool:
    with engine.connect() as conn:
        role = conn.execute(select(memberships.c.role).where(and_(
            memberships.c.user_id == user_id, memberships.c.workspace_id == workspace_id))).scalar()
    return role in ("owner", "admin")


def owner_emails(engine: Engine, workspace_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(users.c.email).join(memberships, memberships.c.user_id == users.c.id).where(
            and_(memberships.c.workspace_id == workspace_id, memberships.c.role.in_(("owner", "admin"))))).all()
    return sorted(str(r[0]) for r in rows)


def spend_nanos(conn: Any, workspace_id: str, budget: Budget, first: date, last: date, *, raw: bool = False) -> int:
    """The known cost in the budget's scope from ``first`` to ``last`` (from the rollups: store.scope_spend)."""
    where: dict[str, str | None] = {}
    if budget.scope_kind in SCOPE_DIMENSIONS:
        where[SCOPE_DIMENSIONS[budget.scope_kind]] = budget.scope_value
    return store.scope_spend(conn, workspace_id, first.isoformat(), last.isoformat(), where, raw=raw)


def budget_views(engine: Engine, workspace_id: str, today: date) -> list[dict[str, Any]]:
    """Each budget with its spend this period and the thresholds already fired (for the page)."""
    out = []
    with engine.connect() as conn:
        for b in list_budgets(engine, workspace_id):
            key, first, last = period_of(b.period, today)
            spent = spend_nanos(conn, workspace_id, b, first, last)
            fired = sorted(int(r[0]) for r in conn.execute(select(workspace_budget_alerts.c.threshold).where(and_(
                workspace_budget_alerts.c.budget_id == b.id, workspace_budget_alerts.c.period == key))))
            out.append({"budget": b, "period_key": key, "spend": Decimal(spent) / NANOS,
                        "percent": round(spent * 100 / b.limit_nanos, 1), "fired": fired})
    return out


def chart_line(engine: Engine, workspace_id: str) -> tuple[Decimal, str] | None:
    """The dashboard's budget line: the first whole-workspace budget, as an amount per day."""
    whole = [b for b in list_budgets(engine, workspace_id) if b.scope_kind == "workspace"]
    if not whole:
        return None
    b = whole[0]
    today = datetime.now(UTC).date()
    _key, first, last = period_of(b.period, today)
    days = (last - first).days + 1
    per_day = (b.limit_usd / days).quantize(Decimal("0.01"))
    label = f"Budget {b.name}: ${b.limit_usd:,.2f} a {b.period}" + (f" (${per_day:,.2f}/day)" if days > 1 else "")
    return per_day, label


def check_budgets(engine: Engine, workspace_id: str, workspace_slug: str, now: float) -> list[Alert]:
    """Record every threshold newly crossed (once per budget, period and threshold); return them."""
    budgets = list_budgets(engine, workspace_id)
    if not budgets:
        return []
    today = datetime.fromtimestamp(now, UTC).date()
    fired_at = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    alerts: list[Alert] = []
    for b in budgets:
        key, first, last = period_of(b.period, today)
        with engine.connect() as conn:
            spent = spend_nanos(conn, workspace_id, b, first, last)
            done = {int(r[0]) for r in conn.execute(select(workspace_budget_alerts.c.threshold).where(and_(
                workspace_budget_alerts.c.budget_id == b.id, workspace_budget_alerts.c.period == key)))}
        for threshold in b.thresholds:
            if threshold in done or spent * 100 < b.limit_nanos * threshold:
                continue
            try:
                with engine.begin() as conn:  # the primary key makes it once, whichever process gets here
                    conn.execute(insert(workspace_budget_alerts).values(
                        budget_id=b.id, period=key, threshold=threshold, fired_at=now, spend_nanos=spent))
            except IntegrityError:
                continue
            alerts.append(Alert(
                budget=b.name, budget_id=b.id, workspace=workspace_slug, period=key, period_kind=b.period,
                threshold=threshold, spend_usd=format(Decimal(spent) / NANOS, "f"),
                limit_usd=format(b.limit_usd, "f"), percent=round(spent * 100 / b.limit_nanos, 2),
                scope={"kind": b.scope_kind, "value": b.scope_value}, fired_at=fired_at))
    return alerts


# -- delivery (after the response, in a worker thread) ---------------------------------------


def _allow_private() -> bool:
    return os.environ.get("HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE") == "1"


def _public_address(ip: str) -> bool:
    """A global address, and so is any IPv4 address inside it: ::ffff:a.b.c.d, ::a.b.c.d,
    6to4 (2002::/16), Teredo and NAT64 (64:ff9b::/96) reach IPv4 through it; the
    local-use NAT64 prefix 64:ff9b:1::/48 is refused whole."""
    import ipaddress

    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        value = int(address)
        if value >> 80 == 0x64FF9B0001:
            return False
        inner = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
        if value >> 32 in (0, 0x64FF9B << 64):
            inner.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
        return all(v4 is None or v4.is_global for v4 in inner)
    return True


def _connect_public(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> Any:
    """``socket.create_connection`` that connects only to the global addresses it resolved itself.

    The check happens at the connection, on the address connected to: a name that
    resolved to a public address for :func:`private_target` and to 127.0.0.1 a moment
    later (DNS rebinding) is refused here."""
    import socket

    if _allow_private():
        sock = socket.create_connection(address, timeout, source_address)
        _deadline(sock)
        return sock
    infos = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)
    refused = [info[4][0] for info in infos if not _public_address(str(info[4][0]))]
    if refused or not infos:
        raise OSError(f"refusing to connect to a non-public address ({refused[0] if refused else 'none'})")
    error: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            sock.connect(sockaddr)
            _deadline(sock)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")


def _deadline(sock: Any) -> None:
    """End the exchange ``TOTAL_S`` after connecting: the timeout is per read, so a
    receiver sending a byte every few seconds would hold the delivery thread for good."""
    import socket
    import threading

    def cut() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already

    timer = threading.Timer(TOTAL_S, cut)
    timer.daemon = True
    timer.start()


def _pinned(cls: Any) -> Any:
    def make(host: str, **kwargs: Any) -> Any:
        conn = cls(host, **kwargs)
        conn._create_connection = _connect_public
        return conn

    return make


class _PublicHTTP(urllib.request.HTTPHandler):
    def http_open(self, req: Any) -> Any:
        import http.client

        return self.do_open(_pinned(http.client.HTTPConnection), req)


class _PublicHTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req: Any) -> Any:
        import http.client

        return self.do_open(_pinned(http.client.HTTPSConnection), req, context=self._context)  # type: ignore[attr-defined]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook's redirect is not followed (it could point into the backend's network): its 3xx is the answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def webhook_opener() -> urllib.request.OpenerDirector:
    """http(s) only, no redirects, no proxy from the environment, public addresses only (at connect time)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _PublicHTTP, _PublicHTTPS, _NoRedirects)


def _post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "halton-meter-cloud-alerts"})
    if urlsplit(url).scheme not in ("http", "https"):
        return 0
    try:
        with webhook_opener().open(request, timeout=TIMEOUT_S) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError, http.client.HTTPException):  # HTTPException: an answer that is not HTTP
        return 0


def private_target(url: str) -> str | None:
    """Why the server refuses to POST to ``url`` (a loopback, private or link-local address), or None.

    Budget webhooks are set by workspace owners: without this, one could make the
    backend send requests into its own network. ``HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE=1``
    allows them (a backend on a private network posting to an internal chat server).
    """
    if _allow_private():
        return None
    import ipaddress
    import socket

    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return "its host does not resolve"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not _public_address(str(address)):
            return f"it resolves to a non-public address ({address})"
    return None


def _host(url: str) -> str:
    """What a log line names of a webhook: its host (a URL's user:password@ and path may be secrets)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.hostname or '?'}{port}"


def send_webhook(url: str, alert: Alert) -> bool:
    why = private_target(url)
    if why is not None:
        log.warning("budget alert %s: webhook %s not called: %s (HALTON_METER_CLOUD_WEBHOOK_ALLOW_PRIVATE=1 "
                    "allows it)", alert.budget, _host(url), why)
        return False
    body = {"text": alert.text(), "event": "budget.threshold", **asdict(alert)}
    for attempt in range(ATTEMPTS):
        status = _post(url, body)
        if 200 <= status < 300:
            return True
        if not (status == 0 or status in (408, 425, 429) or status >= 500) or attempt == ATTEMPTS - 1:
            log.warning("budget alert %s: webhook %s answered %s", alert.budget, _host(url),
                        status or "nothing")
            return False
        time.sleep(1.0 + 2.0 * attempt)
    return False


def smtp_settings() -> dict[str, Any] | None:
    """From HALTON_METER_CLOUD_SMTP_URL (smtp:// or smtps://user:pass@host:port) and _SMTP_FROM."""
    raw = os.environ.get("HALTON_METER_CLOUD_SMTP_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        log.error("HALTON_METER_CLOUD_SMTP_URL must look like smtp://user:password@host:587; e-mail alerts are off")
        return None
    return {"tls": parts.scheme == "smtps", "host": parts.hostname,
            "port": parts.port or (465 if parts.scheme == "smtps" else 25),
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "from": os.environ.get("HALTON_METER_CLOUD_SMTP_FROM", "halton-meter@localhost")}


def send_message(settings: dict[str, Any], message: EmailMessage) -> None:
    """Send one e-mail with :func:`smtp_settings` (STARTTLS when offered); raises OSError/SMTPException."""
    cls = smtplib.SMTP_SSL if settings["tls"] else smtplib.SMTP
    with cls(settings["host"], settings["port"], timeout=TIMEOUT_S) as smtp:
        if not settings["tls"]:
            try:
                smtp.starttls()
            except smtplib.SMTPNotSupportedError:
                pass  # a local relay without TLS
        if settings["user"]:
            smtp.login(settings["user"], settings["password"] or "")
        smtp.send_message(message)


def send_email(settings: dict[str, Any], to: list[str], alert: Alert, app_url: str) -> bool:
    message = EmailMessage()
    message["Subject"] = f"[Halton Meter] budget {alert.budget} {alert.threshold}%"
    message["From"] = settings["from"]
    message["To"] = ", ".join(to)
    message.set_content(f"{alert.text()}\n\nBudgets: {app_url}/{alert.workspace}/settings/budgets\n")
    try:
        send_message(settings, message)
        return True
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("budget alert %s: e-mail not sent: %s", alert.budget, exc)
        return False


def deliver(engine: Engine, workspace_id: str, alerts: list[Alert], app_url: str) -> None:
    hooks = {b.id: b.webhook_url for b in list_budgets(engine, workspace_id)}
    smtp = smtp_settings()
    to = owner_emails(engine, workspace_id) if smtp else []
    for alert in alerts:
        log.warning("budget alert: %s", alert.text())
        url = hooks.get(alert.budget_id)
        if url:
            send_webhook(url, alert)
        if smtp and to:
            send_email(smtp, to, alert, app_url)


class _Checker:
    """Budget checks off the request path: at most one per workspace every ``MIN_INTERVAL_S``.

    A batch asks for a check of its workspace; asks that come while one is due are
    coalesced into it (a busy workspace sends hundreds of batches a minute, and
    each check sums a period of its rows). One thread runs the checks; alerts are
    sent from a thread of their own so a slow webhook never delays another
    workspace's check.
    """

    def __init__(self) -> None:
        import threading

        self._cond = threading.Condition()
        self._due: dict[str, tuple[float, Engine, str, str]] = {}
        self._last: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    def request(self, engine: Engine, workspace_id: str, workspace_slug: str, app_url: str) -> None:
        import threading

        with self._cond:
            if workspace_id in self._due:
                return
            at = max(time.monotonic(), self._last.get(workspace_id, 0.0) + MIN_INTERVAL_S)
            self._due[workspace_id] = (at, engine, workspace_slug, app_url)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hm-cloud-budgets", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        import threading

        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                workspace_id, (at, engine, slug, app_url) = min(self._due.items(), key=lambda kv: kv[1][0])
                wait = at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                del self._due[workspace_id]
                self._last[workspace_id] = time.monotonic()
                if len(self._last) > 100_000:  # forget long-idle workspaces
                    self._last = {k: v for k, v in self._last.items() if v > time.monotonic() - 3600}
            try:
                alerts = check_budgets(engine, workspace_id, slug, time.time())
            except Exception:  # alerts must never stop the checker
                log.exception("budget check failed for workspace %s", slug)
                continue
            if alerts:
                threading.Thread(target=deliver, args=(engine, workspace_id, alerts, app_url),
                                 name="hm-cloud-budget-alerts", daemon=True).start()


MIN_INTERVAL_S = 2.0
CHECKER = _Checker()


def after_ingest(request: Request, workspace_id: str, workspace_slug: str) -> None:
    """Ask for a check of the workspace's budgets (never waits, never fails an upload)."""
    state = cloud(request)
    CHECKER.request(state.engine, workspace_id, workspace_slug, state.app_url)


# -- the page --------------------------------------------------------------------------------


async def budgets_page(request: Request) -> Response:
    found = await member_page(request)
    if isinstance(found, Response):
        return found
    uid, email, ws, mine = found
    state = cloud(request)
    owner = await state.db(is_owner, uid, ws.id)
    error = None
    if request.method == "POST":
        form = await _form(request)
        if not csrf_ok(session_of(request), form.get("csrf_token")):
            return _csrf_failed(request)
        if not owner:
            from .pages import forbidden

            return forbidden(request, email, "Only the workspace's owners and admins can change its budgets.", mine)
        else:
            try:
                from .state import client_address
                from .team import record

                if form.get("action") == "delete":
                    await state.db(delete_budget, ws.id, form.get("budget_id", ""))
                    what = "budget deleted"
                else:
                    values = parse_form(form)
                    await state.db(add_budget, ws.id, values, time.time())
                    what = f"budget {values.get('name', '')} added"
                await state.db(record, ws.id, email, "settings.budget", what, client_address(request), time.time())
                return redirect(request, f"/{ws.slug}/settings/budgets")
            except BudgetError as exc:
                error = str(exc)
    views = await state.db(budget_views, ws.id, datetime.now(UTC).date())
    return render(request, "budgets.html", {
        "user_email": email, "workspace": ws, "workspaces": mine, "views": views, "owner": owner,
        "error": error, "smtp": smtp_settings() is not None,
    }, status=400 if error else 200)


routes = [Route("/{workspace:slug}/settings/budgets", budgets_page, methods=["GET", "POST"])]
