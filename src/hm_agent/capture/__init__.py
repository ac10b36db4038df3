"""Capture: one proxied LLM call in, usage out (stub; see docs/architecture.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
}


@dataclass(frozen=True, slots=True)
class CapturedUsage:
    provider: str
    model: str
    host: str
    endpoint: str
    status: int
    stream: bool
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)


class CallTap:
    def __init__(self, dialect: str, host: str, path: str, request_body: bytes) -> None:
        self.dialect = dialect
        self.host = host
        self.path = path
        self.status = 0
        self.model = "unknown"
        self.stream = False
        try:
            req: Any = json.loads(request_body) if request_body else {}
            if isinstance(req, dict):
                self.model = str(req.get("model") or "unknown")
                self.stream = bool(req.get("stream"))
        except ValueError:
            pass

    def response_headers(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = status

    def feed(self, chunk: bytes) -> None:
        pass

    def finish(self, complete: bool = True) -> CapturedUsage:
        flags = frozenset() if complete else frozenset({"incomplete"})
        return CapturedUsage(
            provider=self.dialect, model=self.model, host=self.host, endpoint=self.path,
            status=self.status, stream=self.stream, flags=flags,
        )


def open_call(
    host: str,
    method: str,
    path: str,
    query: str,
    request_headers: Mapping[str, str],
    request_body: bytes,
    config: Any = None,
) -> CallTap | None:
    hosts = dict(DEFAULT_HOSTS)
    for entry in getattr(config, "capture_hosts", ()) or ():
        hosts[entry[0]] = entry[1]
    dialect = hosts.get(host.lower())
    if dialect is None or method.upper() != "POST":
        return None
    return CallTap(dialect, host, path, request_body)
