"""Opt-in body capture: ``[capture] bodies = "off" | "local" | "sync"`` (default off).

With "local" (or "sync") the request body and the assembled response of each
metered call are kept, encrypted, in ``request_bodies`` beside its row:

- The proxy thread only keeps references to the chunks it forwards anyway; the
  writer thread decodes, assembles, redacts, caps and encrypts (never the proxy).
- Headers are never kept. In the bodies, strings that look like API keys
  (``sk-…``, ``sk-ant-…``, ``AIza…``, ``hm_sync_…``, ``hm_read_…``, JWTs) and whatever
  ``[capture] redact`` regexes match are replaced by ``[REDACTED]`` before anything
  is written.
- Each body is capped at ``body_max_kib`` (256 KiB by default) after redaction,
  with ``truncated`` set when cut.
- Encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under ``body.key`` in the home
  (0600, written atomically); the same retention as the rows applies.

For a stream the response is the text assembled from its events (OpenAI chat
and Responses, Anthropic, Gemini), not the raw SSE.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("off", "local", "sync")
DEFAULT_MAX_KIB = 256
MAX_MAX_KIB = 4096
KEEP_RAW_MAX = 8 * 1024 * 1024  # raw response bytes the proxy keeps a reference to, per call
REDACTED = "[REDACTED]"

# Longest first: sk-ant-… before sk-…
KEY_PATTERNS = (
    r"sk-ant-[A-Za-z0-9_\-]{8,}",
    r"sk-[A-Za-z0-9_\-]{16,}",
    r"AIza[0-9A-Za-z_\-]{20,}",
    r"hm_(?:sync|read)_[A-Za-z0-9]{8,}",
    r"eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}",  # a JWT: header.payload.signature
)
_KEYS = re.compile("|".join(f"(?:{p})" for p in KEY_PATTERNS))


@dataclass(frozen=True, slots=True)
class BodySettings:
    mode: str = "off"
    max_bytes: int = DEFAULT_MAX_KIB * 1024
    redact: tuple[re.Pattern[str], ...] = field(default_factory=tuple)

    @property
    def keep(self) -> bool:
        return self.mode != "off"


def settings_from_config(config: Any) -> BodySettings:
    b = getattr(config, "bodies", None)
    return b if isinstance(b, BodySettings) else BodySettings()


def redact(text: str, extra: tuple[re.Pattern[str], ...] = ()) -> str:
    text = _KEYS.sub(REDACTED, text)
    for pattern in extra:
        text = pattern.sub(REDACTED, text)
    return text


def cap(text: str, max_bytes: int) -> tuple[str, bool]:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore"), True


def prepare(text: str, settings: BodySettings) -> tuple[str, bool]:
    """Redact, then cap (a key cut in half by the cap would no longer match)."""
    # Work on a bounded slice: a key is far shorter than the margin.
    margin = settings.max_bytes + 4096
    head = text[:margin] if len(text) > margin else text
    return cap(redact(head, settings.redact), settings.max_bytes)[0], len(text.encode("utf-8")) > settings.max_bytes


def assemble_stream(raw: bytes) -> str:
    """The text of an SSE stream: content deltas of OpenAI chat/Responses, Anthropic, Gemini."""
    parts: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        parts.extend(_event_text(event))
    return "".join(parts)


def _event_text(event: Any) -> list[str]:
    if not isinstance(event, dict):
        return []
    out: list[str] = []
    for choice in event.get("choices") or []:  # OpenAI chat
        if isinstance(choice, dict):
            delta = choice.get("delta") or {}
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                out.append(delta["content"])
    kind = event.get("type")
    delta = event.get("delta")
    if kind == "response.output_text.delta" and isinstance(delta, str):  # OpenAI Responses
        out.append(delta)
    if kind == "content_block_delta" and isinstance(delta, dict) and isinstance(delta.get("text"), str):
        out.append(delta["text"])  # Anthropic
    for cand in event.get("candidates") or []:  # Gemini
        content = cand.get("content") if isinstance(cand, dict) else None
        for part in (content.get("parts") or []) if isinstance(content, dict) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return out


def decode_response(chunks: list[bytes], encoding: str | None, content_type: str | None) -> str:
    """The response as text: decoded (gzip, br, zstd), and assembled when it is a stream."""
    from .capture.decoding import decoder_for

    raw = b"".join(chunks)
    try:
        raw = decoder_for(encoding).decode(raw)
    except Exception:
        return ""
    if "text/event-stream" in (content_type or "").lower():
        return assemble_stream(raw)
    return raw.decode("utf-8", "replace")


@dataclass(slots=True)
class CapturedBodies:
    """What the proxy thread hands over: references, no copies, no parsing."""

    request: bytes
    response_chunks: list[bytes]
    response_encoding: str | None = None
    response_type: str | None = None


def record(call_id: str, bodies: CapturedBodies, settings: BodySettings) -> tuple[bytes, bool]:
    """The plaintext JSON of one call's bodies (redacted, capped) and whether any was cut."""
    request, cut_req = prepare(bodies.request.decode("utf-8", "replace"), settings)
    response, cut_resp = prepare(decode_response(bodies.response_chunks, bodies.response_encoding,
                                                 bodies.response_type), settings)
    truncated = cut_req or cut_resp
    doc = {"id": call_id, "request": request, "response": response, "truncated": truncated}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8"), truncated


# -- the key --------------------------------------------------------------------


def key_path(home: Path) -> Path:
    return home / "body.key"


def load_or_create_key(home: Path) -> bytes:
    """The Fernet key in ``body.key`` (0600), made on first use."""
    from cryptography.fernet import Fernet

    from .home import write_atomic

    path = key_path(home)
    try:
        key = path.read_bytes().strip()
        Fernet(key)
        return key
    except FileNotFoundError:
        pass
    key = Fernet.generate_key()
    write_atomic(path, key + b"\n", 0o600)
    return key


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    from cryptography.fernet import Fernet

    return Fernet(key).encrypt(plaintext)


def decrypt(key: bytes, token: bytes) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    doc: dict[str, Any] = json.loads(Fernet(key).decrypt(token))
    return doc
