"""The answer to a call a block budget refuses: the provider's own error shape.

SDKs then raise their ordinary API error (openai's ``RateLimitError``,
anthropic's ``RateLimitError``, Gemini clients' 429) carrying the budget's
message. ``x-should-retry: false`` tells the official SDKs not to retry:
the budget will not lift within their backoff. Runs on the proxy thread:
no I/O, just a few bytes.
"""

from __future__ import annotations

import json

STATUS = 429


def error_body(dialect: str, message: str) -> bytes:
    if dialect == "anthropic":
        body: dict[str, object] = {"type": "error", "error": {"type": "budget_exceeded", "message": message}}
    elif dialect == "gemini":
        body = {"error": {"code": STATUS, "message": message, "status": "RESOURCE_EXHAUSTED",
                          "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                       "reason": "BUDGET_EXCEEDED", "domain": "haltonmeter.com"}]}}
    else:
        body = {"error": {"message": message, "type": "budget_exceeded", "param": None,
                          "code": "budget_exceeded"}}
    return json.dumps(body).encode()


def error_response(dialect: str, budget: str, message: str) -> tuple[int, bytes, dict[str, str]]:
    """``(status, body, headers)`` for mitmproxy's ``Response.make``."""
    return STATUS, error_body(dialect, message), {
        "content-type": "application/json",
        "x-should-retry": "false",
        "x-halton-meter-budget": budget,
    }
