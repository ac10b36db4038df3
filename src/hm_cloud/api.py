"""The device-facing JSON API of docs/api.md (everything under /v1 except approve)."""

from __future__ import annotations

import secrets
import time
from datetime import date
from typing import Any

import anyio
import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hm_proto.server import (
    READ_KEY_PREFIX,
    ApiError,
    format_user_code,
    generate_device_code,
    generate_user_code,
    hash_token,
    is_uuid,
    looks_like_token,
)

from . import store
from .bodies import (
    MAX_BODY_BYTES,
    MAX_SMALL_BODY_BYTES,
    decode_body,
    parse_object,
    read_limited,
)
from .db import devices
from .ingest import batch_values, fast_batch
from .limits import PAIRING_STARTS_PER_ADDRESS, Refusal
from .metrics import PAIRINGS, batch_done
from .state import (
    CODE_TTL_SECONDS,
    LONG_POLL_DEFAULT_SECONDS,
    LONG_POLL_MAX_SECONDS,
    MAX_BATCH_ROWS,
    POLL_INTERVAL_SECONDS,
    SLOW_DOWN_STEP_SECONDS,
    client_address,
    cloud,
)
from .validate import SLUG_RE, column_chars, field
from .waiters import recheck_seconds


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def invalid_token(detail: str) -> ApiError:
    return ApiError(401, "invalid_token", detail)


async def _json_object(request: Request, limit: int = MAX_SMALL_BODY_BYTES) -> dict[str, Any]:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), limit)
    return parse_object(raw)


async def authed_device(request: Request) -> store.AuthedDevice:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise invalid_token(
            "Missing bearer token: pair this machine with `halton-meter cloud connect`"
        )
    if looks_like_token(token, READ_KEY_PREFIX):
        raise ApiError(
            403, "forbidden",
            "Read-only API keys (hm_read_…) only read GET /v1/usage: machines use their sync token",
        )
    if not looks_like_token(token):
        raise invalid_token(
            "Malformed token: pair this machine again with `halton-meter cloud connect`"
        )
    device = await cloud(request).db(store.authenticate, hash_token(token))
    # The lookup is by hash; compare again in constant time before trusting it.
    if device is None or not secrets.compare_digest(device.token_hash, hash_token(token)):
        raise invalid_token(
            "Unknown or revoked token: pair this machine again with `halton-meter cloud connect`"
        )
    return device


# -- pairing -------------------------------------------------------------------


async def pairing_start(request: Request) -> Response:
    state = cloud(request)
    counted = await state.reserve([(PAIRING_STARTS_PER_ADDRESS, client_address(request))])
    if isinstance(counted, Refusal):
        wait = counted.retry_after
        detail = f"Too many pairing codes requested from this address: wait {wait} seconds and try again"
        return json_response({"error": "rate_limited", "detail": detail}, 429, {"Retry-After": str(wait)})
    body = await _json_object(request)
    machine_id = field(body, "machine_id", str)
    if not is_uuid(machine_id):
        raise ApiError(400, "invalid_request", "Invalid field: machine_id (expected a UUID)")
    hostname = field(body, "hostname", str)
    os_name = field(body, "os", str, max_len=column_chars(devices.c.os))
    agent_version = field(body, "agent_version", str, max_len=column_chars(devices.c.agent_version))
    workspace = field(body, "workspace", str, nullable=True, required=False)
    if workspace is not None and not SLUG_RE.fullmatch(workspace):
        raise ApiError(
            400, "invalid_request", "Invalid field: workspace (expected a workspace slug)"
        )
    device_code = generate_device_code(secrets.token_bytes)
    for _ in range(20):
        user_code = generate_user_code(secrets.token_bytes)
        created = await state.db(
            store.create_pairing,
            hash_token(device_code),
            user_code,
            machine_id.lower(),
            hostname,
            os_name,
            agent_version,
            workspace,
            time.time(),
            CODE_TTL_SECONDS,
            POLL_INTERVAL_SECONDS,
        )
        if created:
            break
    else:  # pragma: no cover - 31**8 codes make this practically impossible
        raise ApiError(503, "unavailable", "Could not allocate a pairing code: try again")
    shown = format_user_code(user_code)
    PAIRINGS.labels("started").inc()
    return json_response(
        {
            "device_code": device_code,
            "user_code": shown,
            "verification_uri": f"{state.app_url}/connect",
            "verification_uri_complete": f"{state.app_url}/connect?code={shown}",
            "expires_in": CODE_TTL_SECONDS,
            "interval": POLL_INTERVAL_SECONDS,
        }
    )


def _pending() -> ApiError:
    return ApiError(400, "authorization_pending", "Not approved yet: poll again after the interval")


async def _poll_outcome(
    request: Request, code_hash: str
) -> tuple[Response | None, dict[str, Any] | None]:
    """The final answer for this code if it has one, else (None, pairing row)."""
    state = cloud(request)
    pairing = await state.db(store.pairing_by_device_code, code_hash)
    if pairing is None:
        raise ApiError(
            400, "expired_token", "Unknown device code: run `halton-meter cloud connect` again"
        )
    status = pairing["status"]
    if status == "approved":
        collected = await state.db(store.collect_token, code_hash)
        if collected is None:
            raise ApiError(
                400,
                "expired_token",
                "This code was already used: run `halton-meter cloud connect` again",
            )
        token, ws, machine_id = collected
        return (
            json_response(
                {
                    "token": token,
                    "workspace_id": ws.id,
                    "workspace_slug": ws.slug,
                    "workspace_name": ws.name,
                    "machine_id": machine_id,
                }
            ),
            None,
        )
    if status == "denied":
        raise ApiError(400, "access_denied", "The pairing request was denied in the browser")
    if status == "cancelled":
        raise ApiError(
            400,
            "expired_token",
            "This pairing was cancelled on the machine: run `halton-meter cloud connect` again",
        )
    if status == "consumed":
        raise ApiError(
            400,
            "expired_token",
            "This code was already used: run `halton-meter cloud connect` again",
        )
    if time.time() >= pairing["expires_at"]:
        raise ApiError(
            400,
            "expired_token",
            "The code expired (codes last 10 minutes): run `halton-meter cloud connect` again",
        )
    return None, pairing


async def pairing_poll(request: Request) -> Response:
    """Long-poll: hold until approved, denied or expired, or ``wait`` seconds pass.

    slow_down: a poll is too fast when it arrives less than ``interval``
    seconds after the previous poll for the code *ended*, unless that previous
    poll was itself held for at least ``interval`` seconds (a long-poll that
    waited and answered pending may be followed by an immediate poll).
    """
    state = cloud(request)
    body = await _json_object(request)
    device_code = field(body, "device_code", str)
    wait = body.get("wait", LONG_POLL_DEFAULT_SECONDS)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
        raise ApiError(
            400,
            "invalid_request",
            "Invalid field: wait (expected a non-negative number of seconds)",
        )
    wait = min(float(wait), LONG_POLL_MAX_SECONDS)
    code_hash = hash_token(device_code)
    started = time.time()

    answer, pairing = await _poll_outcome(request, code_hash)
    if answer is not None:
        return answer
    assert pairing is not None
    interval = int(pairing["interval"])
    last_end, last_held = pairing["last_poll_end"], pairing["last_poll_held"] or 0.0
    if last_end is not None and started - last_end < interval and last_held < interval:
        interval += SLOW_DOWN_STEP_SECONDS
        await state.db(store.record_poll, code_hash, time.time(), 0.0, interval)
        raise ApiError(400, "slow_down", f"Polled too fast: wait {interval} seconds between polls")

    deadline = min(started + wait, float(pairing["expires_at"]))
    await state.listen_for_pairings()
    recheck = recheck_seconds()
    try:
        with state.waiters.watch(code_hash) as woken:
            while True:
                answer, _ = await _poll_outcome(request, code_hash)
                if answer is not None:
                    return answer
                remaining = deadline - time.time()
                if remaining <= 0:
                    break
                with anyio.move_on_after(min(remaining, recheck)):
                    await woken.wait()
        # The wait ran out: one last look, so a code that just expired says so.
        answer, _ = await _poll_outcome(request, code_hash)
        if answer is not None:
            return answer
        raise _pending()
    finally:
        ended = time.time()
        with anyio.CancelScope(shield=True):  # record even if the client went away
            await state.db(store.record_poll, code_hash, ended, ended - started, interval)


async def pairing_cancel(request: Request) -> Response:
    """The machine gave up waiting (Ctrl-C): the code cannot be approved any more."""
    state = cloud(request)
    body = await _json_object(request)
    code_hash = hash_token(field(body, "device_code", str))
    known = await state.db(store.cancel_pairing, code_hash, time.time())
    await state.pairing_changed(code_hash)
    return json_response({"cancelled": known})


async def pairing_revoke(request: Request) -> Response:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not looks_like_token(token):
        raise invalid_token("Missing or malformed bearer token")
    state = cloud(request)
    token_hash = hash_token(token)
    if not await state.db(store.token_known, token_hash):
        raise invalid_token("Unknown token")
    await state.db(store.revoke_token, token_hash, time.time())
    return json_response({"revoked": True})


# -- usage rows ----------------------------------------------------------------


async def requests_batch(request: Request) -> Response:
    started = time.perf_counter()
    try:
        device = await authed_device(request)
        raw = await read_limited(
            request.stream(), request.headers.get("content-length"), MAX_BODY_BYTES
        )
        encoding = request.headers.get("content-encoding")
        # Decompressing, validating and storing are CPU and disk work: all of it
        # runs in a worker thread so long-polls on the event loop stay prompt.
        accepted, duplicates = await cloud(request).db(_ingest_body, device, raw, encoding, time.time())
    except ApiError:
        batch_done(started, "rejected")
        raise
    batch_done(started, "accepted", accepted, duplicates)
    response = json_response({"accepted": accepted, "duplicates": duplicates})
    if accepted:
        from .budgets import after_ingest

        after_ingest(request, device.workspace.id, device.workspace.slug)
    return response


def _ingest_body(
    engine: Engine, device: store.AuthedDevice, raw: bytes, encoding: str | None, now: float
) -> tuple[int, int]:
    with store.sqlite_batch_slot(engine):
        return _ingest_decoded(engine, device, raw, encoding, now)


def _ingest_decoded(
    engine: Engine, device: store.AuthedDevice, raw: bytes, encoding: str | None, now: float
) -> tuple[int, int]:
    decoded = decode_body(raw, encoding, MAX_BODY_BYTES)
    fast = fast_batch(decoded, device.workspace.id, device.machine_id, now, MAX_BATCH_ROWS)
    if fast is not None:  # the common case, decoded and checked in one pass
        return store.ingest_values(engine, device, fast, now)
    body = parse_object(decoded)
    batch_id = field(body, "batch_id", str)
    if not is_uuid(batch_id):
        raise ApiError(400, "invalid_request", "Invalid field: batch_id (expected a UUID)")
    rows_in = field(body, "rows", list)
    if len(rows_in) > MAX_BATCH_ROWS:
        raise ApiError(
            413,
            "payload_too_large",
            f"Batch has {len(rows_in)} rows; the limit is {MAX_BATCH_ROWS} rows per batch: split the batch",
        )
    values = batch_values(rows_in, device.workspace.id, device.machine_id, now)
    return store.ingest_values(engine, device, values, now)


def _date_param(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise ApiError(422, "missing_field", f"Field required: {name}")
    try:
        return date.fromisoformat(value).isoformat() if len(value) == 10 else _bad_date(name)
    except ValueError:
        return _bad_date(name)


def _bad_date(name: str) -> str:
    raise ApiError(400, "invalid_request", f"Invalid field: {name} (expected YYYY-MM-DD)")


async def requests_totals(request: Request) -> Response:
    device = await authed_device(request)
    from_date = _date_param(request, "from_date")
    to_date = _date_param(request, "to_date")
    if from_date > to_date:
        raise ApiError(400, "invalid_request", "Invalid range: from_date is after to_date")
    group_by = request.query_params.get("group_by")
    if group_by is not None and (group_by == "machine" or not store.valid_dimension(group_by)):
        raise ApiError(
            400, "invalid_request",
            "Invalid field: group_by (expected one of day, provider, model, project, repo, branch, "
            "program, os_user, member or tag:KEY)",
        )
    days = await cloud(request).db(
        store.machine_totals, device.workspace.id, device.machine_id, from_date, to_date
    )
    from .retention import whoami_fields

    # Days before retained_from were deleted on purpose: reconcile does not re-send them.
    kept = await cloud(request).db(whoami_fields, device.workspace.id, time.time())
    body: dict[str, Any] = {"days": days, "retention_days": kept["retention_days"],
                            "retained_from": kept["retained_from"]}
    if group_by is not None:
        body["group_by"] = group_by
        body["groups"] = await cloud(request).db(
            store.machine_group_totals, device.workspace.id, device.machine_id, from_date, to_date,
            group_by,
        )
    return json_response(body)


def _too_many(detail: str, retry_after: int) -> Response:
    return json_response({"error": "rate_limited", "detail": detail}, 429, {"Retry-After": str(retry_after)})


USAGE_GROUPS = ("day", "machine", "model", "provider")
USAGE_CSV_COLUMNS = ("key", "label", "rows", "cost_usd", "unknown_price_rows", "no_usage_rows",
                     "error_rows", "input_tokens", "output_tokens")


async def usage(request: Request) -> Response:
    """GET /v1/usage: a workspace's usage for scripts and BI tools (read-only API key)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise invalid_token("Missing bearer key: create a read-only key on the workspace's API keys page")
    if looks_like_token(key):
        raise ApiError(403, "forbidden", "Sync tokens upload only: read usage with a read-only API key (hm_read_…)")
    from . import team
    from .limits import READ_KEY_GUESSES_PER_ADDRESS, USAGE_READS_PER_KEY

    state = cloud(request)
    # Counted before the lookup (a key that is not live is a guess), released for a live one.
    counted = await state.reserve([(READ_KEY_GUESSES_PER_ADDRESS, client_address(request))])
    if isinstance(counted, Refusal):
        return _too_many(f"Too many unknown keys from this address: wait {counted.retry_after} seconds",
                        counted.retry_after)
    if not looks_like_token(key, READ_KEY_PREFIX):
        raise invalid_token("Malformed key: copy the whole hm_read_… key from the API keys page")
    found = await state.db(team.authenticate_read_key, hash_token(key), time.time())
    if found is None or not secrets.compare_digest(found[0], hash_token(key)):
        raise invalid_token("Unknown or revoked key: create a new one on the workspace's API keys page")
    await state.release(counted)
    read = await state.reserve([(USAGE_READS_PER_KEY, found[0])])
    if isinstance(read, Refusal):
        return _too_many(f"This key read usage {USAGE_READS_PER_KEY.count} times in "
                        f"{int(USAGE_READS_PER_KEY.window) // 60} minutes: wait {read.retry_after} seconds "
                        "(or poll less often)", read.retry_after)
    workspace = found[1]
    today = date.today()
    params = request.query_params
    from_date = _date_param(request, "from_date") if "from_date" in params else (today.replace(day=1)).isoformat()
    to_date = _date_param(request, "to_date") if "to_date" in params else today.isoformat()
    if from_date > to_date:
        raise ApiError(400, "invalid_request", "Invalid range: from_date is after to_date")
    if (date.fromisoformat(to_date) - date.fromisoformat(from_date)).days > 3660:
        raise ApiError(400, "invalid_request", "Invalid range: at most 10 years at once")
    group_by = params.get("group_by", "day")
    if group_by not in USAGE_GROUPS:
        raise ApiError(400, "invalid_request", "Invalid field: group_by (expected day, machine, model or provider)")
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv", "focus"):
        raise ApiError(400, "invalid_request", "Invalid field: format (expected json, csv or focus)")
    if fmt == "focus":  # group_by does not apply: FOCUS lines are per day, provider, model, project, machine
        return await _usage_focus(request, workspace.id, workspace.slug, from_date, to_date)
    groups = await cloud(request).db(store.spend_breakdown, workspace.id, from_date, to_date, group_by)
    out = [
        {
            "key": g["key"], "label": g["label"], "rows": g["rows"], "cost_usd": store.format_nanos(g["nanos"]),
            "unknown_price_rows": g["unknown"], "no_usage_rows": g["no_usage"], "error_rows": g["errors"],
            "input_tokens": g["input_tokens"], "output_tokens": g["output_tokens"],
        }
        for g in groups
    ]
    if fmt == "csv":
        return Response(
            usage_csv(out), 200, media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="usage-{workspace.slug}-{from_date}-{to_date}.csv"'},
        )
    return json_response({"workspace": workspace.slug, "from_date": from_date, "to_date": to_date,
                          "group_by": group_by, "groups": out})


async def _usage_focus(request: Request, workspace_id: str, slug: str, from_date: str, to_date: str) -> Response:
    """GET /v1/usage?format=focus: a FOCUS 1.2 CSV with the columns of `halton-meter report --format focus`."""
    from hm_charts.focus import COLUMNS, OUTSIDE, focus_line

    groups = await cloud(request).db(store.focus_groups, workspace_id, from_date, to_date)
    lines = [focus_line(g["day"], g["provider"], g["model"], g["project"], g["machine"], g["cost"], g["calls"],
                        g["tokens"]) for g in groups]
    return Response(
        usage_csv(lines, COLUMNS, OUTSIDE), 200, media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="focus-{slug}-{from_date}-{to_date}.csv"'},
    )


def usage_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] = USAGE_CSV_COLUMNS,
              escaped: tuple[str, ...] = ("key", "label")) -> str:
    """CSV with a header; outside strings (the ``escaped`` columns) are made cells a
    spreadsheet never runs as a formula (hm_charts.cells)."""
    import csv
    import io

    from hm_charts.cells import spreadsheet_safe

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for name in columns:
            value = row.get(name)
            text = "" if value is None else str(value)
            cells.append(spreadsheet_safe(text) if name in escaped else text)
        writer.writerow(cells)
    return buf.getvalue()


async def whoami(request: Request) -> Response:
    from .retention import whoami_fields

    device = await authed_device(request)
    return json_response(
        {
            "workspace_id": device.workspace.id,
            "workspace_slug": device.workspace.slug,
            "workspace_name": device.workspace.name,
            "machine_id": device.machine_id,
            "hostname": device.hostname,
            **await cloud(request).db(whoami_fields, device.workspace.id, time.time()),
        }
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


routes = [
    Route("/v1/pairing/start", pairing_start, methods=["POST"]),
    Route("/v1/pairing/poll", pairing_poll, methods=["POST"]),
    Route("/v1/pairing/cancel", pairing_cancel, methods=["POST"]),
    Route("/v1/pairing/revoke", pairing_revoke, methods=["POST"]),
    Route("/v1/requests/batch", requests_batch, methods=["POST"]),
    Route("/v1/requests/totals", requests_totals, methods=["GET"]),
    Route("/v1/whoami", whoami, methods=["GET"]),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
