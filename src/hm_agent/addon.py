"""The mitmproxy addon: LLM calls are tapped as they stream; everything else passes.

Runs on the proxy thread, so every hook is cheap and never raises: the
capture tap is wrapped (a broken parser never breaks a flow), responses of
LLM calls are streamed chunk by chunk (a client sees each SSE event as soon
as upstream sends it), and a finished call is handed to the writer without
waiting. TLS to hosts that are not LLM APIs is not decrypted at all.
Request headers and URLs (API keys travel there) are given to the tap and
never logged or stored here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from .attribution import (
    PROJECT_HEADER,
    TAGS_HEADER,
    CallerResolver,
    PendingCaller,
    attribute,
    settings_from_config,
)
from .bodies import KEEP_RAW_MAX, CapturedBodies
from .writer import CapturedCall, RowWriter

log = logging.getLogger("hm_agent.addon")

# `halton-meter doctor --probe` fetches https://PROBE_HOST/ with the user's environment:
# only a program that went through this proxy (and trusts its CA) gets PROBE_BODY back.
PROBE_HOST = "probe.halton-meter.invalid"
PROBE_BODY = b"halton-meter probe ok\n"
_TAP_KEY = "hm_call"
_HEADERS_KEY = "hm_attribution_headers"
_PLAIN_HEADERS_KEY = "hm_request_headers"
_WS_CALLER_KEY = "hm_ws_caller"
_WS_KEY = "hm_ws"
_BODY_KEY = "hm_request_body"
# As the proxy's stream_large_bodies: a bigger request body is passed on unread.
MAX_REQUEST_BODY = 1 << 20


def rfc3339_ms(epoch: float) -> str:
    """``2026-11-25T14:53:26.123Z`` (UTC, milliseconds)."""
    millis = int(epoch * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


def plain_headers(headers: Any) -> dict[str, str]:
    """mitmproxy Headers as a plain dict with lower-case names (repeats joined by ", ").

    Reading mitmproxy's Headers name by name is slow (each lookup scans and
    decodes every field); the tap reads them all, so decode once from the raw fields.
    """
    out: dict[str, str] = {}
    for raw_name, raw_value in headers.fields:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def host_key(host: str, port: int) -> str:
    """How a host is named to the capture seam: ``host`` on 443, else ``host:port``."""
    host = host.lower()
    return host if port == 443 else f"{host}:{port}"


class _Call:
    """Per-flow state of one tapped LLM call."""

    __slots__ = ("tap", "id", "started", "ttfb_ms", "finished", "broken", "caller", "header_project",
                 "header_tags", "injected", "bodies", "kept")

    def __init__(self, tap: Any, started: float, caller: PendingCaller | None,
                 header_project: str | None, header_tags: str | None) -> None:
        self.tap = tap
        self.caller = caller
        self.header_project = header_project
        self.header_tags = header_tags
        self.injected = False  # stream_options.include_usage was added by us
        self.id = str(uuid.uuid4())
        self.started = started
        self.ttfb_ms: int | None = None
        self.finished = False
        self.broken = False
        self.bodies: Any = None  # hm_agent.bodies.CapturedBodies when [capture] bodies is on
        self.kept = 0

    def feeder(self) -> Callable[[bytes], bytes]:
        tap = self.tap

        def feed(chunk: bytes) -> bytes:
            bodies = self.bodies
            if bodies is not None and chunk and self.kept < KEEP_RAW_MAX:
                bodies.response_chunks.append(chunk)  # a reference: the writer thread reads it
                self.kept += len(chunk)
            if chunk and not self.broken:
                try:
                    tap.feed(chunk)
                except Exception:
                    self.broken = True
                    log.exception("capture tap failed while reading a response; the call is still proxied")
            return chunk

        return feed


class _RequestBody:
    """A request body mitmproxy streams upstream while we keep a copy (up to MAX_REQUEST_BODY).

    Streaming the request lets mitmproxy send the headers upstream as soon as
    it has them and each body chunk as it arrives, instead of after the whole
    body and a round of the ``request`` hook: the call reaches the provider,
    and its first event the client, sooner.
    """

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def __call__(self, chunk: bytes) -> bytes:
        if chunk and self.size <= MAX_REQUEST_BODY:
            self.size += len(chunk)
            if self.size <= MAX_REQUEST_BODY:
                self.chunks.append(chunk)
            else:
                self.chunks.clear()
        return chunk

    def body(self) -> bytes:
        return b"".join(self.chunks) if self.size <= MAX_REQUEST_BODY else b""


def _refused(flow: Any, info: Any, budgets: Any, attribution: Callable[[], Any]) -> bool:
    """Answer the call with the provider's budget error if a block budget covers it."""
    try:
        rule = budgets.blocking(info.provider, info.model, attribution)
        if rule is None:
            return False
        from mitmproxy import http

        from .budgetguard import error_response

        status, body, headers = error_response(info.dialect, rule.budget, rule.message)
        flow.response = http.Response.make(status, body, headers)
        return True
    except Exception:
        log.exception("budget check failed; the call is let through")
        return False


class MeterAddon:
    """Plugs capture into mitmproxy; one instance per daemon."""

    def __init__(self, config: Any, writer: RowWriter, resolver: CallerResolver | None = None) -> None:
        self.config = config
        self.writer = writer
        self.calls_seen = 0
        self.tap_errors = 0
        self.attribution = settings_from_config(getattr(config, "attribution", {}))
        self.resolver = resolver if resolver is not None else CallerResolver()
        self.resolver.start()
        self._callers: dict[str, PendingCaller] = {}
        self.budgets: Any = None  # hm_agent.budgets.BudgetTracker when the daemon runs

    def reload(self, config: Any) -> None:
        self.config = config
        self.attribution = settings_from_config(getattr(config, "attribution", {}))

    def done(self) -> None:
        self.resolver.stop()

    def attribution_health(self) -> dict[str, Any]:
        """``status --json`` "attribution": on/off, connections resolved and not (by reason)."""
        return {"enabled": self.attribution.enabled, "supported": self.resolver.supported,
                "backend": self.resolver.backend,
                **self.resolver.stats}

    # -- connections: who is calling (resolved off this thread) --------------------

    def client_connected(self, client: Any) -> None:
        if not self.attribution.enabled:
            return
        try:
            pending = self.resolver.open(tuple(client.peername[:2]), tuple(client.sockname[:2]))
        except Exception:
            log.exception("attribution: cannot queue a connection; its rows are unattributed")
            return
        self._callers[client.id] = pending

    def client_disconnected(self, client: Any) -> None:
        self._callers.pop(client.id, None)

    def is_llm_host(self, host: str, port: int) -> bool:
        from .capture import route_for

        try:
            return route_for(host_key(host, port), self.config) is not None
        except Exception:
            return False

    # -- TLS: decrypt only LLM API hosts ------------------------------------------

    def tls_clienthello(self, data: Any) -> None:
        if data.client_hello.sni == PROBE_HOST:
            data.establish_server_tls_first = False  # answered here: there is no upstream
            return
        if self.config.intercept_other_hosts:
            return
        address = data.context.server.address
        host = address[0] if address else (data.client_hello.sni or "")
        port = address[1] if address else 443
        if not self.is_llm_host(host, port):
            data.ignore_connection = True

    # -- HTTP -------------------------------------------------------------------

    def requestheaders(self, flow: Any) -> None:
        req = flow.request
        # Before mitmproxy may send the headers on: ours never reach the provider.
        flow.metadata[_PLAIN_HEADERS_KEY] = self._strip_our_headers(flow)
        # Only a body of known length (HTTP/2 may have none, and an HTTP/1
        # upstream would then need the connection closed to end it), and never
        # one that inject_stream_usage may rewrite in the request hook. While a
        # block budget is spent, LLM request bodies are read whole first: the
        # request hook must see the model before anything reaches the provider.
        if (req.method == "POST" and "content-length" in req.headers and self._streamable(req)
                and not self._blocks_active(req)):
            body = _RequestBody()
            flow.metadata[_BODY_KEY] = body
            req.stream = body

    def _streamable(self, req: Any) -> bool:
        """An LLM call whose body the request hook leaves as it is."""
        from .capture import route_for

        try:
            route = route_for(host_key(req.host, req.port), self.config)
        except Exception:
            return False
        if route is None:
            return False
        may_inject = getattr(self.config, "inject_stream_usage", True) and route.dialect == "openai"
        return not (may_inject and req.path.partition("?")[0].endswith("completions"))

    def _blocks_active(self, req: Any) -> bool:
        """A spent block budget may cover a call to this host (its model is not known yet)."""
        blocks = self.budgets.blocks if self.budgets is not None else ()
        if not blocks:
            return False
        from .capture import route_for

        try:
            route = route_for(host_key(req.host, req.port), self.config)
        except Exception:
            return True
        provider = route.provider.lower() if route is not None else ""
        now = time.time()
        return any(rule.active(now) and all(v.lower() == provider for k, v in rule.scope if k == "provider")
                   for rule in blocks)

    @staticmethod
    def _strip_our_headers(flow: Any) -> dict[str, str]:
        """The request headers as a plain dict, less X-Halton-Project/Tags (kept in the flow's metadata)."""
        req = flow.request
        headers = plain_headers(req.headers)
        header_project = headers.pop(PROJECT_HEADER, None)
        header_tags = headers.pop(TAGS_HEADER, None)
        if header_project is not None:
            del req.headers[PROJECT_HEADER]
        if header_tags is not None:
            del req.headers[TAGS_HEADER]
        if header_project is not None or header_tags is not None:
            flow.metadata[_HEADERS_KEY] = (header_project, header_tags)  # a WebSocket upgrade keeps them
        return headers

    # -- doctor --probe: the daemon answers a reserved name itself ----------------

    def http_connect(self, flow: Any) -> None:
        if flow.request.host == PROBE_HOST:
            from mitmproxy import http

            now = time.time()
            flow.response = http.Response(flow.request.data.http_version, 200, b"Connection established",
                                          http.Headers(), b"", None, now, now)

    def request(self, flow: Any) -> None:
        from .capture import open_call

        req = flow.request
        if req.host == PROBE_HOST:
            from mitmproxy import http

            flow.response = http.Response.make(200, PROBE_BODY, {"content-type": "text/plain"})
            return
        path, _, query = req.path.partition("?")
        headers = flow.metadata.pop(_PLAIN_HEADERS_KEY, None)
        if headers is None:
            headers = self._strip_our_headers(flow)
        header_project, header_tags = flow.metadata.get(_HEADERS_KEY, (None, None))
        streamed: _RequestBody | None = flow.metadata.pop(_BODY_KEY, None)
        raw = req.raw_content if req.raw_content is not None else (streamed.body() if streamed else b"")
        try:
            tap = open_call(
                host_key(req.host, req.port), req.method, path, query,
                headers, raw or b"", self.config,
            )
        except Exception:
            self.tap_errors += 1
            log.exception("capture failed to open a call; the call is proxied unmetered")
            return
        if tap is not None:
            caller = self._callers.get(flow.client_conn.id) if self.attribution.enabled else None
            # A body already streamed upstream is a call in flight: it finishes.
            if streamed is None and self.budgets is not None and self.budgets.blocks and _refused(
                flow, tap.info, self.budgets, lambda: self._attribution_now(caller, header_project, header_tags)
            ):
                return
            call = flow.metadata[_TAP_KEY] = _Call(tap, req.timestamp_start or time.time(), caller,
                                                   header_project, header_tags)
            if getattr(self.config, "bodies", None) is not None:
                call.bodies = CapturedBodies(raw or b"", [])
            if getattr(self.config, "inject_stream_usage", True):
                self._inject_usage(req, call)
        elif (self.budgets is not None and self.budgets.blocks and req.method == "GET"
              and req.headers.get("upgrade", "").lower() == "websocket"):
            self._refuse_websocket(flow, path, query, header_project, header_tags)

    def _refuse_websocket(self, flow: Any, path: str, query: str, header_project: str | None,
                          header_tags: str | None) -> None:
        """A WebSocket session (Realtime, Responses) a spent block budget covers: refused at the handshake.

        Its model is known only from ``?model=`` (Realtime); a budget scoped by model
        cannot refuse a session that names none.
        """
        from types import SimpleNamespace

        from .capture.websocket import open_websocket

        req = flow.request
        session = open_websocket(host_key(req.host, req.port), path, query, {}, self.config)
        if session is None:
            return
        caller = self._callers.get(flow.client_conn.id) if self.attribution.enabled else None
        info = SimpleNamespace(provider=session.provider, model=session.model, dialect="openai")
        _refused(flow, info, self.budgets, lambda: self._attribution_now(caller, header_project, header_tags))

    def _inject_usage(self, req: Any, call: _Call) -> None:
        """Ask a streamed OpenAI-style call for its usage (capture/inject.py); never raises."""
        from .capture.inject import inject_include_usage, wants_injection

        try:
            if not wants_injection(call.tap.info, getattr(self.config, "capture_hosts", ())):
                return
            if req.headers.get("content-encoding"):
                return
            body = inject_include_usage(req.raw_content or b"")
            if body is None:
                return
            req.content = body
            req.headers["accept-encoding"] = "identity"  # so the stream can be edited as it passes
            call.injected = True
        except Exception:
            log.exception("could not add include_usage to a streamed call; it is proxied as sent")

    def _attribution_now(self, pending: PendingCaller | None, header_project: str | None,
                         header_tags: str | None) -> tuple[str | None, tuple[str, ...]]:
        """(project, tag terms) as far as known now, for a project/tag-scoped block (never waits)."""
        from .budgets import tag_terms

        found = attribute(self.attribution, pending.caller if pending is not None else None,
                          header_project, header_tags)
        return found.project, tag_terms(found.tags)

    def responseheaders(self, flow: Any) -> None:
        call: _Call | None = flow.metadata.get(_TAP_KEY)
        if call is None:
            # Not an LLM call: stream it through, never buffer someone else's download.
            flow.response.stream = True
            return
        call.ttfb_ms = int((time.time() - call.started) * 1000)
        if call.bodies is not None:
            call.bodies.response_encoding = flow.response.headers.get("content-encoding")
            call.bodies.response_type = flow.response.headers.get("content-type")
        try:
            call.tap.response_headers(flow.response.status_code, plain_headers(flow.response.headers))
        except Exception:
            call.broken = True
            self.tap_errors += 1
            log.exception("capture tap failed on response headers; the call is still proxied")
        feed = call.feeder()
        if call.injected and self._strippable(flow.response):
            from .capture.inject import UsageChunkStripper

            strip = UsageChunkStripper()

            def stripped(chunk: bytes) -> bytes | list[bytes]:
                # Never hand mitmproxy b"" mid-body: HTTP/1.1 would send it as the last chunk.
                return strip(feed(chunk)) or []

            flow.response.stream = stripped
        else:
            flow.response.stream = feed

    @staticmethod
    def _strippable(response: Any) -> bool:
        headers = response.headers
        return (200 <= response.status_code < 300 and not headers.get("content-encoding")
                and "text/event-stream" in headers.get("content-type", "").lower())

    def response(self, flow: Any) -> None:
        self._finish(flow, complete=True)

    # -- WebSocket (OpenAI Responses over WebSocket, Realtime) --------------------

    def websocket_start(self, flow: Any) -> None:
        from .capture.websocket import open_websocket

        req = flow.request
        path, _, query = req.path.partition("?")
        session = open_websocket(host_key(req.host, req.port), path, query, {}, self.config)
        if session is not None:
            flow.metadata[_WS_KEY] = session
            if self.attribution.enabled:  # the connection may be gone when the last response ends
                flow.metadata[_WS_CALLER_KEY] = self._callers.get(flow.client_conn.id)

    def websocket_message(self, flow: Any) -> None:
        # mitmproxy keeps every message of a flow; a long session (Codex) would grow
        # without bound, and nothing here needs them after this hook.
        messages = flow.websocket.messages
        message = messages[-1] if messages else None
        messages.clear()
        session = flow.metadata.get(_WS_KEY)
        if session is None or message is None or not message.is_text:
            return
        now = time.time()
        if message.from_client:
            session.client_message(message.content, now)
        else:
            self._submit_ws(flow, session.server_message(message.content, now), now)

    def websocket_end(self, flow: Any) -> None:
        session = flow.metadata.pop(_WS_KEY, None)
        if session is not None:
            self._submit_ws(flow, session.close(), time.time())

    def _submit_ws(self, flow: Any, finished: list[Any], now: float) -> None:
        if not finished:
            return
        caller = flow.metadata.get(_WS_CALLER_KEY)
        header_project, header_tags = flow.metadata.get(_HEADERS_KEY, (None, None))
        for usage, response in finished:
            self.calls_seen += 1
            self.writer.submit(CapturedCall(
                id=str(uuid.uuid4()),
                ts=rfc3339_ms(response.started),
                usage=usage,
                latency_ms=int((now - response.started) * 1000),
                ttfb_ms=None if response.first_event is None else int((response.first_event - response.started) * 1000),
                caller=caller,
                header_project=header_project,
                header_tags=header_tags,
                attribution=self.attribution,
            ))

    def error(self, flow: Any) -> None:
        self._finish(flow, complete=False)

    def _finish(self, flow: Any, complete: bool) -> None:
        call: _Call | None = flow.metadata.get(_TAP_KEY)
        if call is None or call.finished:
            return
        call.finished = True
        try:
            usage = call.tap.finish(complete=complete)
        except Exception:
            self.tap_errors += 1
            log.exception("capture tap failed to finish; the call is not metered")
            return
        now = time.time()
        self.calls_seen += 1
        self.writer.submit(
            CapturedCall(
                id=call.id,
                ts=rfc3339_ms(call.started),
                usage=usage,
                latency_ms=int((now - call.started) * 1000),
                ttfb_ms=call.ttfb_ms,
                caller=call.caller,
                header_project=call.header_project,
                header_tags=call.header_tags,
                attribution=self.attribution,
                bodies=call.bodies,
            )
        )
